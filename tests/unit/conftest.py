"""Hypothesis's "mutation" profile: the mutation run (pyproject.toml, [tool.mutmut]) loads it so
that the same tree always gets the same score: the same examples each run, no example database
carried from one mutant to the next, and no deadline a busy machine could trip.

And fewer examples: each mutant reruns every test that reaches its function, and the Titan-body
property of test_edge.py reaches nearly the whole core (its 300 examples take seconds: most of the
run's time, and past the run's 2 s limit per test). A test that sets its own count takes it through
tests.fuzz_strategies.examples(), which gives this profile's in the mutation run; the normal suite
keeps its counts."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None, deadline=None, max_examples=5)
