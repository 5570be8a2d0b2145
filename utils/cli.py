"""Shared command-line plumbing for train.py and test.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from utils.options import OptionsError

_USER_ERRORS = (OptionsError, FileNotFoundError, ValueError)


def run_reporting_errors(fn: Callable[[], int]) -> int:
    """Run ``fn``; user-facing failures print one clear message and return exit code 2.

    Bad options, missing paths or devices, unusable data, NaN and out-of-memory stops are
    reported without a traceback; set UPFORGE_DEBUG=1 to see it.
    """
    try:
        return fn()
    except (*_USER_ERRORS, RuntimeError) as err:
        if os.environ.get("UPFORGE_DEBUG"):
            raise
        kind = "" if isinstance(err, _USER_ERRORS) else f"{type(err).__name__}: "
        print(f"error: {kind}{err}", file=sys.stderr)
        return 2
