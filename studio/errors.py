"""The one exception type the pipeline raises for problems a user can fix.

Every StudioError carries a plain-language ``message`` (what is wrong) and a ``hint`` (what to
do). The CLI prints both and exits 2; the UI shows them as a message instead of a traceback.
"""

from __future__ import annotations


class StudioError(Exception):
    """A problem with the user's input, files or setup, with a hint on how to fix it."""

    kind = "error"

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}".strip())


class InputError(StudioError):
    """A file is missing, unreadable, empty, corrupt or in an unsupported format."""

    kind = "input"


class NoFaceError(StudioError):
    """No usable face was found where one is needed."""

    kind = "no_face"


class LimitError(StudioError):
    """An input exceeds a configured limit (size, duration, resolution)."""

    kind = "limit"


class WeightsError(StudioError):
    """Model weights are missing, cannot be downloaded, or fail their checksum."""

    kind = "weights"


class CheckpointError(StudioError):
    """A checkpoint or cache is missing, corrupt, or does not match what was asked for."""

    kind = "checkpoint"


class CancelledError(StudioError):
    """Long work was cancelled by the user; nothing partial was kept."""

    kind = "cancelled"
