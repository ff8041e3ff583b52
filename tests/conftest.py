"""Shared test setup: the hypothesis profile and the seeded random-curve factory fixture.

The profile is derandomized (the same examples on every run, so a failure reproduces) with
no deadline (numba compiles on first call) and few examples per property, so the whole
suite stays fast on two cores. For a longer, randomized search set
``BUDGETOPT_HYPOTHESIS_SCALE=50`` (multiplies every property's example count) and
``HYPOTHESIS_PROFILE=random``.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# tests/ runs under --import-mode=importlib, so make its helper modules importable.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

settings.register_profile(
    "budgetopt",
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("random", parent=settings.get_profile("budgetopt"), derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "budgetopt"))

from generators import random_curves  # noqa: E402  (needs the sys.path line above)


@pytest.fixture
def make_curves():
    """The factory :func:`random_curves`, returning a :class:`budgetopt.Curves`."""
    import budgetopt

    def make(seed, head_shape=(3,), n_points=5, **kwargs):
        utility, grid = random_curves(seed, head_shape, n_points, **kwargs)
        return budgetopt.Curves(utility, grid)

    return make
