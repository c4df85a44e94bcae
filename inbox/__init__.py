"""Quota Inbox: Titan quota CDC events -> PostgreSQL inbox -> CSLA quota table.

The layers of the package are held by import-linter (pyproject.toml, [tool.importlinter]).
"""
