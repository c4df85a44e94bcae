"""Hypothesis's "mutation" profile: the mutation run (pyproject.toml, [tool.mutmut]) loads it so
that the same tree always gets the same score: the same examples each run, no example database
carried from one mutant to the next, and no deadline a busy machine could trip."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None, deadline=None)
