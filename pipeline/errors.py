"""The errors of MetaDNS and the exit codes ``metadns`` gives them (no heavy imports).

:class:`SetupError`: bad input or configuration found before anything is written; the
command line prints ``metadns: error: <message>`` and exits 2.  :class:`RunFailed`, and
any other exception: a failure during a run; the command line prints the traceback and
exits 1.  Library code raises these and never prints them; only ``pipeline.cli.main``
turns them into exit codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["MetaDNSError", "SetupError", "RunFailed", "ConfigError", "FrameError", "SubmitError",
           "NoFinishedRuns", "TuneFolderExists", "setup_errors"]


class MetaDNSError(Exception):
    """Base of the errors MetaDNS raises on purpose."""


class SetupError(MetaDNSError):
    """Bad input or configuration, detected before anything is written (exit 2)."""


class RunFailed(MetaDNSError):
    """A failure during a run, after outputs may have been written (exit 1)."""


class ConfigError(SetupError, ValueError):
    """An invalid configuration.  ``field`` is the dotted key at fault ("" for the whole file)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class FrameError(SetupError, ValueError):
    """A structure file cannot be read or one of its frames does not fit the system."""


class SubmitError(SetupError):
    """Bad ``metadns submit`` input; ``option`` names the option at fault."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


class NoFinishedRuns(SetupError):
    """DIR holds no finished run folder."""


class TuneFolderExists(SetupError, FileExistsError):
    """The tune output folder exists already (a sweep never overwrites one)."""


@contextlib.contextmanager
def setup_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Re-raise exceptions of ``kinds`` as :class:`SetupError` with the same message.

    For the setup stage of a command, where e.g. a missing input file (FileNotFoundError) or
    a bad argument (ValueError) is bad input, not a failed run.
    """
    try:
        yield
    except SetupError:
        raise
    except kinds as error:
        raise SetupError(str(error)) from error
