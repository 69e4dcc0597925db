"""Calling the command line in-process, as tests of several packages do."""

from __future__ import annotations

import contextlib
import io
import traceback

from pipeline import cli


def run_cli(*args) -> tuple[int, str, str]:
    """``pipeline.cli.main`` in-process: (exit code, stdout, stderr).

    An exception escaping ``main`` becomes exit code 1 with its traceback on stderr, as the
    console script would report it; argparse's SystemExit gives its code.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # noqa: BLE001 - reported like the console script does
            traceback.print_exc(file=err)
            code = 1
    return code, out.getvalue(), err.getvalue()
