"""`python -m inbox.commands`: the same as `inbox`."""

from __future__ import annotations

import sys

from inbox.commands import main

sys.exit(main())
