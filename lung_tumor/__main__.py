"""Allow ``python -m lung_tumor``."""

from __future__ import annotations

import sys

from lung_tumor.cli import main

if __name__ == "__main__":
    sys.exit(main())
