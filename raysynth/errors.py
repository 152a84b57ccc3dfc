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


def find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` in ``exc``'s chain of causes (Ray wraps a worker's error in its own:
    its ``cause``, ``__cause__``, ``__context__``, ``error`` and ``worker_failures``)."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        for attr in ("cause", "__cause__", "__context__", "error"):
            nxt = getattr(e, attr, None)
            if isinstance(nxt, BaseException):
                stack.append(nxt)
        for nxt in getattr(e, "worker_failures", {}).values() if hasattr(e, "worker_failures") else []:
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return None
