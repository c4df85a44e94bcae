"""`python -m inbox_bench [--quick] [--only PATHS] [--out DIR]`: the same as `inbox-bench`."""

from __future__ import annotations

import sys

from inbox_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
