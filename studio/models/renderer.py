"""The neural renderer: pix2pixHD generator with self-attention, multi-scale PatchGAN, losses.

Facial map (+ optionally the template crop with its lower face blanked) -> RGB face crop, after
pix2pixHD (Wang et al. 2018, NVIDIA/pix2pixHD ``models/networks.py``) with SAGAN self-attention
blocks (Zhang et al. 2019) interleaved with the ResNet blocks of the bottleneck, as in the paper.

Tensors are NCHW float in [-1, 1]. Generator input channels (``RendererConfig.in_channels``):

    0..2  the synthetic facial map (studio.render.facemap), RGB
    3..5  only when ``with_template``: the template crop, RGB, with the lower face (the region the
          facial map's edges leave out) set to 0 (mid grey), so colour and texture of the upper
          face and background are given and only the mouth and jaw must be generated
    6     only when ``composite``: that lower-face mask (1 inside, -1 outside); the output is the
          template outside it (:class:`CompositeGenerator`)

Sizes. A stride-2 convolution maps H to ceil(H / 2) and a transposed one maps H to 2H, so the
output has the input's size only when the size is a multiple of ``RendererConfig.multiple`` =
2 ** (n_downsample + local_enhancer); :class:`RendererConfig` refuses other sizes.
720 = 45 x 16: the plain global generator may downsample 4 times (45 x 45 bottleneck); with the
local enhancer the global net works at 360 = 45 x 8, so it downsamples 3 times.
:meth:`RendererConfig.for_size` picks these settings (256: global, 4; 512: local, 4; 720: local, 3).

Discriminators see the generator input concatenated with a real or generated crop (conditional
GAN) and return every block's output, so the generator can be trained with feature matching.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from studio.errors import WeightsError

NormLayer = Callable[[int], nn.Module]
GAN_MODES = ("lsgan", "hinge")


@dataclass(frozen=True)
class RendererConfig:
    size: int = 256  # square crop side in pixels (input and output)
    with_template: bool = False  # also feed the template crop with the lower face blanked
    ngf: int = 64  # generator channels at full resolution
    n_downsample: int = 4  # stride-2 convolutions of the global generator
    n_blocks: int = 9  # ResNet blocks in the global generator's bottleneck
    n_attention: int = 1  # self-attention blocks interleaved with them
    local_enhancer: bool = False  # pix2pixHD local enhancer: global net at half resolution
    n_blocks_local: int = 3  # ResNet blocks of the local enhancer branch
    norm: str = "instance"  # "instance" or "batch"
    ndf: int = 64  # discriminator channels of the first layer
    n_layers_d: int = 3  # stride-2 layers per PatchGAN discriminator
    n_discriminators: int = 2  # scales: full, 1/2, 1/4, ...
    composite: bool = False  # with_template only: generate the blanked lower face alone (see CompositeGenerator)

    def __post_init__(self) -> None:
        if self.norm not in ("instance", "batch"):
            raise ValueError(f"norm must be 'instance' or 'batch', got {self.norm!r}")
        for name in ("ngf", "ndf", "n_discriminators", "n_layers_d"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("n_downsample", "n_blocks", "n_attention", "n_blocks_local"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.composite and not self.with_template:
            raise ValueError("composite needs with_template: the upper face is copied from the template")
        if self.size < 16 or self.size % self.multiple:
            raise ValueError(
                f"size {self.size} is not a multiple of {self.multiple} = 2 ** (n_downsample + "
                f"local_enhancer); use RendererConfig.for_size({self.size}) or a size like "
                f"{max(self.multiple, self.size // self.multiple * self.multiple)}")

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this."""
        return 2 ** (self.n_downsample + int(self.local_enhancer))

    @property
    def in_channels(self) -> int:
        return 3 + 3 * self.with_template + self.composite

    @classmethod
    def for_size(cls, size: int, **overrides) -> "RendererConfig":
        """Settings that suit ``size``: the local enhancer from 512 up, as many downsamplings
        (at most 4) as the size allows; ``overrides`` replace any field."""
        local = overrides.pop("local_enhancer", size >= 512)
        n_down = overrides.pop("n_downsample", None)
        if n_down is None:
            n_down = next((k for k in (4, 3, 2) if size % 2 ** (k + int(local)) == 0), None)
            if n_down is None:
                raise ValueError(f"size {size} must be a multiple of {2 ** (2 + int(local))}")
        return cls(size=size, local_enhancer=local, n_downsample=n_down, **overrides)


def norm_layer(kind: str) -> NormLayer:
    """The injected normalization: InstanceNorm (pix2pixHD's choice, no affine) or BatchNorm."""
    if kind == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False)
    return functools.partial(nn.BatchNorm2d, affine=True)


class ResnetBlock(nn.Module):
    """x + (pad, conv3, norm, ReLU, pad, conv3, norm)(x); shape preserved."""

    def __init__(self, channels: int, norm: NormLayer) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class SelfAttention2d(nn.Module):
    """SAGAN self-attention: x + gamma * softmax(q k^T / sqrt(d)) v over all H*W positions.

    q, k: 1x1 convolutions to channels // 8; v: 1x1 to channels. gamma starts at 0, so the block
    is the identity when created and learns how much non-local context to mix in. (SAGAN leaves
    out the 1/sqrt(d) scaling; with it the softmax does not saturate at wide bottlenecks.)
    (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, HW, C')
        k = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, HW, C')
        v = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (N, HW, C)
        out = out.transpose(1, 2).reshape(n, c, h, w)
        return x + self.gamma.to(out.dtype) * out


def bottleneck(channels: int, n_blocks: int, n_attention: int, norm: NormLayer) -> list[nn.Module]:
    """n_blocks ResNet blocks with n_attention self-attention blocks spread evenly among them
    (one attention block among 9 ResNet blocks sits after the 4th)."""
    after = [round((j + 1) * n_blocks / (n_attention + 1)) for j in range(n_attention)]
    layers: list[nn.Module] = []
    for i in range(n_blocks + 1):
        layers += [SelfAttention2d(channels) for _ in range(after.count(i))]
        if i < n_blocks:
            layers.append(ResnetBlock(channels, norm))
    return layers


class GlobalGenerator(nn.Module):
    """pix2pixHD global generator: conv7 -> n stride-2 convs -> ResNet (+ attention) blocks ->
    n transposed convs -> conv7 -> tanh. (N, in, H, W) -> (N, out, H, W), H and W multiples of
    2 ** n_downsample. ``features`` is everything before the last conv (N, ngf, H, W)."""

    def __init__(self, in_channels: int, out_channels: int = 3, ngf: int = 64, n_downsample: int = 4,
                 n_blocks: int = 9, n_attention: int = 1, norm: NormLayer = norm_layer("instance")) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), norm(ngf), nn.ReLU(True)]
        for i in range(n_downsample):
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), norm(2 * c), nn.ReLU(True)]
        layers += bottleneck(ngf * 2 ** n_downsample, n_blocks, n_attention, norm)
        for i in range(n_downsample, 0, -1):
            c = ngf * 2 ** i
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                       norm(c // 2), nn.ReLU(True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _downsample_2x() -> nn.Module:
    return nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)


class LocalEnhancer(nn.Module):
    """pix2pixHD local enhancer (one level): a global generator of width 2*ngf works on the input
    downsampled 2x; its features are added to a full-resolution branch's stride-2 features, then
    ResNet blocks, a transposed conv and conv7 -> tanh. (N, in, H, W) -> (N, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int = 3, ngf: int = 32, n_downsample: int = 3,
                 n_blocks: int = 9, n_attention: int = 1, n_blocks_local: int = 3,
                 norm: NormLayer = norm_layer("instance")) -> None:
        super().__init__()
        self.global_net = GlobalGenerator(in_channels, out_channels, 2 * ngf, n_downsample, n_blocks,
                                          n_attention, norm)
        self.global_net.head = nn.Identity()  # its features feed the local branch
        self.downsample = _downsample_2x()
        self.local_down = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), norm(ngf), nn.ReLU(True),
            nn.Conv2d(ngf, 2 * ngf, 3, stride=2, padding=1), norm(2 * ngf), nn.ReLU(True),
        )
        self.local_up = nn.Sequential(
            *[ResnetBlock(2 * ngf, norm) for _ in range(n_blocks_local)],
            nn.ConvTranspose2d(2 * ngf, ngf, 3, stride=2, padding=1, output_padding=1), norm(ngf), nn.ReLU(True),
            nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = self.global_net.features(self.downsample(x))
        return self.local_up(self.local_down(x) + coarse)


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pixHD NLayerDiscriminator): conv4 s2 blocks, then two conv4 s1.
    (N, C, H, W) -> list of every block's output; the last one (N, 1, h, w) holds the scores."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3,
                 norm: NormLayer = norm_layer("instance")) -> None:
        super().__init__()
        blocks = [[nn.Conv2d(in_channels, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, True)]]
        c = ndf
        for _ in range(1, n_layers):
            blocks.append([nn.Conv2d(c, min(2 * c, 512), 4, stride=2, padding=2), norm(min(2 * c, 512)),
                           nn.LeakyReLU(0.2, True)])
            c = min(2 * c, 512)
        blocks.append([nn.Conv2d(c, min(2 * c, 512), 4, stride=1, padding=2), norm(min(2 * c, 512)),
                       nn.LeakyReLU(0.2, True)])
        blocks.append([nn.Conv2d(min(2 * c, 512), 1, 4, stride=1, padding=2)])
        self.blocks = nn.ModuleList(nn.Sequential(*b) for b in blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """n PatchGAN discriminators on the input at full, 1/2, 1/4 ... resolution.
    (N, C, H, W) -> [scale][block] feature maps, scale 0 = full resolution."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, n_discriminators: int = 2,
                 norm: NormLayer = norm_layer("instance")) -> None:
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, ndf, n_layers, norm)
                                    for _ in range(n_discriminators))
        self.downsample = _downsample_2x()

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i, disc in enumerate(self.scales):
            if i:
                x = self.downsample(x)
            out.append(disc(x))
        return out


class CompositeGenerator(nn.Module):
    """A generator that draws only the blanked lower face and copies the rest of the template.

    Input (N, 7, H, W): facial map (0..2), masked template (3..5), lower-face mask (6; 1 = to be
    generated, -1 = template). The inner pix2pixHD generator's last convolution also sees the
    input at full resolution (a skip connection), so the texture next to the mask's edge need not
    pass the bottleneck; the output is ``m * generated + (1 - m) * template``. The upper face is
    exact from the first step, and every gradient goes to the mouth and jaw.
    """

    def __init__(self, inner: nn.Module, in_channels: int, ngf: int) -> None:
        super().__init__()
        self.inner = inner
        if isinstance(inner, GlobalGenerator):  # skip connection into the last convolution
            inner.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf + in_channels, 3, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.inner, GlobalGenerator):
            generated = self.inner.head(torch.cat([self.inner.features(x), x], dim=1))
        else:
            generated = self.inner(x)
        m = (x[:, 6:7] + 1) * 0.5
        return m * generated + (1 - m) * x[:, 3:6]


def build_generator(cfg: RendererConfig) -> nn.Module:
    """The generator for ``cfg``: (N, cfg.in_channels, S, S) -> (N, 3, S, S) in [-1, 1]."""
    norm = norm_layer(cfg.norm)
    if cfg.local_enhancer:
        net: nn.Module = LocalEnhancer(cfg.in_channels, 3, cfg.ngf, cfg.n_downsample, cfg.n_blocks,
                                       cfg.n_attention, cfg.n_blocks_local, norm)
    else:
        net = GlobalGenerator(cfg.in_channels, 3, cfg.ngf, cfg.n_downsample, cfg.n_blocks, cfg.n_attention, norm)
    return CompositeGenerator(net, cfg.in_channels, cfg.ngf) if cfg.composite else net


def build_discriminator(cfg: RendererConfig) -> MultiscaleDiscriminator:
    """Discriminators for ``cfg``: input = generator input and a crop, concatenated (in + 3 ch)."""
    return MultiscaleDiscriminator(cfg.in_channels + 3, cfg.ndf, cfg.n_layers_d, cfg.n_discriminators,
                                   norm_layer(cfg.norm))


# -- losses ----------------------------------------------------------------------------------

def adversarial_loss(preds: list[list[torch.Tensor]], real: bool, mode: str = "lsgan",
                     for_discriminator: bool = True) -> torch.Tensor:
    """GAN loss summed over discriminator scales (each scale's last output = its patch scores).

    lsgan: (p - 1)^2 for real, p^2 for fake. hinge: the discriminator gets relu(1 - p) for real
    and relu(1 + p) for fake; the generator gets -p (``real`` is ignored for it).
    """
    if mode not in GAN_MODES:
        raise ValueError(f"gan mode must be one of {GAN_MODES}, got {mode!r}")
    total = preds[0][-1].new_zeros((), dtype=torch.float32)
    for scale in preds:
        p = scale[-1].float()
        if mode == "lsgan":
            total = total + ((p - 1) ** 2 if real else p ** 2).mean()
        elif for_discriminator:
            total = total + F.relu(1 - p if real else 1 + p).mean()
        else:
            total = total - p.mean()
    return total


def feature_matching_loss(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
    """pix2pixHD feature matching: L1 between the discriminators' intermediate features of the
    generated and the real crop (real ones detached), weighted 4 / (n_layers + 1) / n_scales."""
    total = fake[0][0].new_zeros((), dtype=torch.float32)
    for f_scale, r_scale in zip(fake, real):
        w = 4.0 / (len(f_scale) - 1) / len(fake)
        for f, r in zip(f_scale[:-1], r_scale[:-1]):
            total = total + w * F.l1_loss(f.float(), r.detach().float())
    return total


# VGG19 "features" layer list (torchvision numbering); the loss uses relu1_1 .. relu5_1.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
_VGG_CUTS = (2, 7, 12, 21, 30)  # slice ends after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
_VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def _vgg19_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(True)]
            c = int(v)
    return nn.Sequential(*layers[:_VGG_CUTS[-1]])


class VGGPerceptualLoss(nn.Module):
    """pix2pixHD's VGG loss: weighted L1 between VGG19 relu{1..5}_1 features of two images in
    [-1, 1]. The VGG weights are frozen and come only from a local file (:meth:`from_file`)."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.slices = nn.ModuleList(features[a:b] for a, b in zip((0,) + _VGG_CUTS[:-1], _VGG_CUTS))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "VGGPerceptualLoss":
        """Load torchvision-named VGG19 weights (``features.{i}.weight`` / ``.bias``) from a local
        .safetensors file. Nothing is ever downloaded; WeightsError if the file is missing or wrong.
        (Convert torchvision's vgg19-dcbbe544.pth once with safetensors.torch.save_file.)"""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        hint = ("Point vgg_weights at a VGG19 .safetensors file with torchvision's key names, "
                "or leave it empty to train without the perceptual loss.")
        if not path.is_file():
            raise WeightsError(f"VGG19 weights not found at {path}.", hint)
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}.", hint) from None
        features = _vgg19_features()
        want = {f"features.{k}": v for k, v in features.state_dict().items()}
        missing = [k for k in want if k not in state]
        wrong = [k for k in want if k in state and state[k].shape != want[k].shape]
        if missing or wrong:
            raise WeightsError(f"{path} is not VGG19: missing {missing[:3]}, wrong shape {wrong[:3]}.", hint)
        features.load_state_dict({k[len("features."):]: state[k].float() for k in want})
        return cls(features)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = ((fake.float() + 1) / 2 - self.mean) / self.std
        y = ((real.float() + 1) / 2 - self.mean) / self.std
        total = x.new_zeros(())
        for w, block in zip(_VGG_WEIGHTS, self.slices):
            x, y = block(x), block(y)
            total = total + w * F.l1_loss(x, y.detach())
        return total
