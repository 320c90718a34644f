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
