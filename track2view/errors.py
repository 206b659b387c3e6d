"""How the command lines (train.py, infer.py, curate, precompute) report bad input: one line, exit status 2."""

from __future__ import annotations

import os
import sys

EXIT_BAD_INPUT = 2


def report_bad_input(error: BaseException, prog: str | None = None) -> int:
    """Print `error` as one line `[prog: ]error: ...` on stderr and return EXIT_BAD_INPUT.

    With T2V_TRACEBACK=1 in the environment the error is re-raised instead, to show the traceback.
    """
    if os.environ.get("T2V_TRACEBACK"):
        raise error
    message = " ".join(str(error).split()) or type(error).__name__
    prefix = f"{prog}: " if prog else ""
    print(f"{prefix}error: {message} (T2V_TRACEBACK=1 shows the traceback)", file=sys.stderr)
    return EXIT_BAD_INPUT
