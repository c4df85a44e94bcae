"""Apply: claim events from the inbox, validate them, apply them set-based in SQL."""
