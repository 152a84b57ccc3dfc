"""User-facing errors: each says what is wrong and what to do instead.

The command line prints these as one clear message and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class RaysynthError(Exception):
    """Base class for errors a user can fix (bad config, bad data, missing model)."""


class ConfigError(RaysynthError):
    """A config key, value or file is wrong."""


class DataError(RaysynthError):
    """The dataset cannot give what the config asks (too few images, empty class, bad path)."""


class RunDirError(RaysynthError):
    """A run directory is missing, inconsistent or written by an incompatible version."""


class TrainingError(RaysynthError):
    """Training cannot continue (for example a non-finite loss)."""
