"""Shared command-line plumbing for train.py and test.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from utils.options import OptionsError

# Failures whose message is written for the user: printed as they are.
_USER_ERRORS = (OptionsError, FileNotFoundError, ValueError)
# Failures of the run's surroundings (a device, a file system, a missing package): printed with
# their kind, since the message alone may not say what went wrong (``[Errno 28] ...``).
_RUN_ERRORS = (RuntimeError, OSError, ImportError)


def run_reporting_errors(fn: Callable[[], int]) -> int:
    """Run ``fn``; user-facing failures print one clear message and return exit code 2.

    Bad options, missing paths or devices, unreadable files, missing packages, unusable data, NaN
    and out-of-memory stops are reported without a traceback; set UPFORGE_DEBUG=1 to see it.
    """
    try:
        return fn()
    except (*_USER_ERRORS, *_RUN_ERRORS) as err:
        if os.environ.get("UPFORGE_DEBUG"):
            raise
        kind = "" if isinstance(err, _USER_ERRORS) else f"{type(err).__name__}: "
        print(f"error: {kind}{err}", file=sys.stderr)
        if not isinstance(err, _USER_ERRORS):
            print("(set UPFORGE_DEBUG=1 to see where it was raised)", file=sys.stderr)
        return 2
