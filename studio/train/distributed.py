"""Data-parallel training under ``torchrun``: the process group, DDP, and one global batch split
across the ranks.

``torchrun --standalone --nproc_per_node=N -m studio train-mapping ...`` (also ``train-renderer``,
``train-prior``) starts N processes (ranks); each command's CLI opens the group with
:func:`process_group` (gloo on the CPU, NCCL for CUDA tensors) and the trainers take it from
:func:`current`. Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) :func:`current` is
:data:`SINGLE` and every helper below is the identity: one process trains exactly as before.
The mapping trainers (train-mapping, train-prior) run on the CPU, one thread per process, also on
a GPU node (a 0.2 M-parameter network); the renderer runs one process per GPU.

How N ranks train the model one process would (same global batch, same loss curve):

- Every rank draws the same global batch: the shuffle, and every per-sample random number
  (conditioning swaps, voice augmentation), come from generators seeded by (seed, epoch or step)
  and are drawn for the whole global batch on every rank; rank r trains on the contiguous rows
  :meth:`Dist.shard` of it. What torch draws as a whole tensor (dropout masks) cannot follow
  the sample: each rank gets its own stream (:meth:`Dist.rank_seed`), so with dropout the runs
  agree in distribution, not number for number.
- Loss: each rank's mean over its rows is scaled by ``share * world_size`` (share: its fraction of
  the global batch) before ``backward``; DDP averages the gradients over the ranks, which is then
  the gradient of the global batch's mean even when the batch does not divide by N. A rank with
  no row (a last batch smaller than N) runs one row at share 0: every rank must join each
  gradient all-reduce.
- Values that decide something (validation loss -> early stopping; a time budget) are identical
  on every rank: :meth:`Dist.sum_over_ranks` all-gathers and adds in rank order on each rank,
  :meth:`Dist.agree` takes rank 0's decision.
- Files, logs and progress bars: rank 0 only (:attr:`Dist.is_main`; the ``studio`` loggers of
  the other ranks show warnings and errors only).
- BatchNorm: converted to SyncBatchNorm on CUDA; on the CPU (no SyncBatchNorm there) its batch
  statistics are per rank. The mapping network has none (LayerNorm); the renderer uses
  InstanceNorm unless configured otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Mapping, Sequence

from studio.errors import InputError

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # set by torchrun for every worker
# Rank 0 alone preprocesses clips and writes checkpoints while the others wait at a barrier: a
# generous limit (torchrun itself stops every rank as soon as one fails).
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    """This process's place in the training group.

    rank in [0, world_size); local_rank: the rank on this machine (its GPU); device: where the
    model trains ("cpu" or "cuda:<local_rank>"); backend: the torch.distributed backend, None for
    one process without a group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def active(self) -> bool:
        """A process group is open (possibly of one process, under ``--nproc_per_node=1``)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- splitting a global batch -------------------------------------------------------------
    def part(self, n: int) -> slice:
        """This rank's contiguous block of n items: sizes differ by at most one, in rank order
        (possibly empty)."""
        q, r = divmod(n, self.world_size)
        start = self.rank * q + min(self.rank, r)
        return slice(start, start + q + (self.rank < r))

    def shard(self, n: int) -> tuple[slice, float]:
        """(rows, share) of a global training batch of n rows: this rank trains on ``rows`` and
        scales its mean loss by ``share * world_size`` (share = its rows / n). An empty block
        becomes row 0 at share 0 (the rank joins the gradient all-reduce, contributing nothing)."""
        rows = self.part(n)
        if rows.stop == rows.start:
            return slice(0, 1), 0.0
        return rows, (rows.stop - rows.start) / n

    def require_divisible(self, batch_size: int, option: str) -> None:
        """InputError unless ``batch_size`` splits evenly over the ranks."""
        if batch_size % self.world_size:
            raise InputError(f"The batch of {batch_size} does not split evenly over {self.world_size} processes.",
                             f"Use {option} with a multiple of {self.world_size} (the global batch), "
                             "or another --nproc_per_node.")

    def rank_seed(self, seed: int) -> int:
        """``seed`` on rank 0 (so one process is unchanged), a seed derived from (seed, rank) on
        the others: torch's own random streams (dropout) must not repeat across ranks."""
        if self.rank == 0:
            return seed
        import numpy as np

        return int(np.random.default_rng([seed, self.rank]).integers(2**62))

    # -- modules and collectives ------------------------------------------------------------
    def wrap(self, module):
        """``module`` wrapped in DistributedDataParallel (its parameters' gradients averaged over
        the ranks at every backward), or ``module`` itself without a group. On CUDA its BatchNorm
        layers become SyncBatchNorm in place (the parameters stay the same objects)."""
        if not self.active:
            return module
        import torch
        from torch.nn.parallel import DistributedDataParallel

        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
        if self.device.startswith("cuda"):
            if has_bn:
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
            return DistributedDataParallel(module, device_ids=[self.local_rank])
        if has_bn and self.is_main:
            log.warning("BatchNorm on the CPU: its statistics are per process (SyncBatchNorm needs CUDA)")
        return DistributedDataParallel(module)

    def sum_over_ranks(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks, bit-identical on every rank (gathered, then added
        in rank order); the values themselves without a group."""
        if not self.active:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        local = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        total = parts[0].clone()
        for p in parts[1:]:
            total += p
        return total.cpu().tolist()

    def mean_over_ranks(self, values: Mapping[str, float]) -> dict[str, float]:
        """{name: the mean over the ranks} (equal-sized shards: the global batch's mean)."""
        sums = self.sum_over_ranks(list(values.values()))
        return {k: s / self.world_size for k, s in zip(values, sums)}

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (decisions from clocks or other per-rank state)."""
        if not self.active:
            return bool(flag)
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(bool(flag))], device=self._comm_device())
        dist.broadcast(t, src=0)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it fills a cache), then the other ranks (they read it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def _comm_device(self) -> str:
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else "cpu"  # gloo takes CPU tensors


SINGLE = Dist()


def torchrun_env(environ: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's environment variables, None when none is set.
    InputError when only some are set or they make no sense."""
    present = [k for k in ENV_VARS if k in environ]
    if not present:
        return None
    hint = "Launch with `torchrun --nproc_per_node=N -m studio ...`, or unset RANK, WORLD_SIZE and LOCAL_RANK."
    if len(present) < len(ENV_VARS):
        missing = sorted(set(ENV_VARS) - set(present))
        raise InputError(f"{', '.join(present)} set but not {', '.join(missing)}.", hint)
    try:
        rank, world, local = (int(environ[k]) for k in ENV_VARS)
    except ValueError:
        raise InputError(f"RANK, WORLD_SIZE, LOCAL_RANK must be integers, got "
                         f"{', '.join(repr(environ[k]) for k in ENV_VARS)}.", hint) from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise InputError(f"RANK {rank}, WORLD_SIZE {world}, LOCAL_RANK {local} do not fit together.", hint)
    return rank, world, local


def _device(device: str, local_rank: int) -> str:
    """The device of this rank: CUDA -> this machine's GPU number ``local_rank``; else the CPU."""
    return f"cuda:{local_rank}" if str(device).startswith("cuda") else "cpu"


def current(device: str = "cpu") -> Dist:
    """The group this process trains in: the open one (see :func:`process_group`), or
    :data:`SINGLE` on ``device``. ``device``: where the trainer would run alone ("cpu", "cuda"...).

    InputError when torchrun started this process but no group is open: the ranks would each
    train the whole model and write the same files.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Dist(rank, dist.get_world_size(), local, _device(device, local), str(dist.get_backend()))
    if torchrun_env(os.environ) is not None:
        raise InputError("This process was started by torchrun, but no process group is open.",
                         "Run train-mapping, train-prior or train-renderer through `torchrun ... -m studio COMMAND`, "
                         "or call the trainer inside studio.train.distributed.process_group().")
    return dataclasses.replace(SINGLE, device=str(device))


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[Dist]:
    """Open the torchrun process group for the block and yield :func:`current`; one process
    (no torchrun environment) or a group already open: just yield :func:`current`.

    Backend: gloo when the model trains on the CPU; on CUDA "cpu:gloo,cuda:nccl" (NCCL for the
    model's gradients, gloo for the small CPU tensors of the helpers). The group is destroyed
    when the block ends, also on an error; the ``studio`` loggers of ranks > 0 are raised to
    WARNING meanwhile.
    """
    import torch
    import torch.distributed as dist

    env = torchrun_env(os.environ)
    if env is None or (dist.is_available() and dist.is_initialized()):
        yield current(device)
        return
    if not dist.is_available():
        raise InputError("This torch build has no torch.distributed.",
                         "Install a torch build with it, or run one process.")
    rank, world, local = env
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise InputError(f"{' and '.join(missing)} not set: a process group needs its rendezvous address.",
                         "Launch with `torchrun --standalone --nproc_per_node=N -m studio ...`.")
    dev = _device(device, local)
    if dev.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s).",
                             "Start at most one process per GPU (--nproc_per_node).")
        torch.cuda.set_device(local)
    backend = "cpu:gloo,cuda:nccl" if dev.startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    quiet = logging.getLogger("studio")
    level = quiet.level
    if rank != 0:
        quiet.setLevel(logging.WARNING)
    log.debug("rank %d of %d (local %d) on %s, backend %s", rank, world, local, dev, backend)
    try:
        yield current(device)
    finally:
        quiet.setLevel(level)
        dist.destroy_process_group()
