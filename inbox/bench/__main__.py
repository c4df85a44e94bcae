"""`python -m inbox.bench [--quick] [--out DIR]`: the same as `inbox bench`."""

from __future__ import annotations

import sys

from inbox.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
