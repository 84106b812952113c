"""``python -m fastobs``: the same entry point as the ``fastobs`` console script."""

from __future__ import annotations

import sys

from fastobs.cli import main

if __name__ == "__main__":
    sys.exit(main())
