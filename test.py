"""Evaluate trained models: ``python test.py -opt options/test/X.yml [-o key.path=value ...]
[--models NAME=[ema:|swa:|twopass:|tta:]PATH ...] [--tta] [--baselines] [--strips K] [--no-labels]
[--no-lpips] [--out DIR] [--check]`` (docs/evaluation.md).

The work is done by :mod:`models.evaluation` (a module named ``test`` would be shadowed by
Python's own ``test`` package once installed, so the console script points there).
"""

import sys

from models.evaluation import check, evaluate, main

__all__ = ["check", "evaluate", "main"]

if __name__ == "__main__":
    sys.exit(main())
