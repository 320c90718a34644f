"""Errors a user can cause (bad config, bad data, bad path). The CLI prints them as one line."""


class VqgenError(Exception):
    """Base class for errors the CLI reports as one clear line and a non-zero exit."""


class ConfigError(VqgenError, ValueError):
    """A config that cannot be built: unknown key, wrong type, bad override, unknown preset."""


class DataError(VqgenError, ValueError):
    """A dataset that cannot be used: unknown spec, missing files, nothing readable."""


class TrainingDiverged(VqgenError, RuntimeError):
    """A non-finite loss; the last good checkpoint is kept."""


class WeightsError(VqgenError, ValueError):
    """A weight file that cannot be used: unreadable, not a plain state dict, wrong keys or shapes."""


class WeightsMismatch(WeightsError, RuntimeError):
    """Weights that do not fit the architecture their config describes: missing or unexpected keys,
    wrong shapes (a RuntimeError too, as torch's ``load_state_dict`` raises)."""


class CheckpointError(VqgenError, RuntimeError):
    """A run's checkpoint that cannot be read or written; the older checkpoint is kept."""


class RunInUse(VqgenError, RuntimeError):
    """Another process holds the run directory's lock: two runs never train into one directory."""


class WriteError(VqgenError, OSError):
    """A file that could not be written (disk full, no permission); the file there before is unchanged."""


class TrainingInterrupted(VqgenError):
    """Training stopped by SIGTERM or SIGINT after finishing its step and writing a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
