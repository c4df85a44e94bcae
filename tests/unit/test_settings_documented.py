"""Every setting is in the README's configuration table, under its environment variable."""

from __future__ import annotations

import re
from pathlib import Path

from inbox.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Configuration") : text.index("## Commands")]
    documented = set(re.findall(r"`(INBOX_[A-Z0-9_]+)`", table))

    missing = {f"INBOX_{name.upper()}" for name in Settings.model_fields} - documented

    assert not missing, f"not in the README's configuration table: {sorted(missing)}"
