"""Evaluate trained models: ``python test.py -opt options/test/X.yml [-o key.path=value ...] [--check]``.

The work is done by :mod:`models.evaluation` (a module named ``test`` would be shadowed by
Python's own ``test`` package once installed, so the console script points there).
"""

import sys

from models.evaluation import evaluate, main

__all__ = ["evaluate", "main"]

if __name__ == "__main__":
    sys.exit(main())
