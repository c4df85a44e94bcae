"""`python -m inbox.cli`: the same as `inbox` (inbox/commands)."""

from __future__ import annotations

import sys

from inbox.commands import main

if __name__ == "__main__":
    sys.exit(main())
