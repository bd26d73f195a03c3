"""The batch prefetcher (mpcli/meta/prefetch.py): same results as calling in place."""

from __future__ import annotations

import functools
import operator

import pytest

from mpcli.meta.curriculum import Stage, _next_keys
from mpcli.meta.prefetch import Prefetcher


@pytest.mark.parametrize("workers", [0, 2])
def test_get_returns_the_function_of_the_key_in_any_order(workers):
    with Prefetcher(functools.partial(operator.mul, 10), workers) as p:
        assert [p.get((k,), [(k + 1,), (k + 2,)]) for k in range(5)] == [0, 10, 20, 30, 40]
        assert p.get((7,)) == 70  # a key never announced
        assert all(k[0] > 7 for k in p.pending) or not p.pending  # stale announcements dropped


def test_errors_reach_the_caller_and_workers_must_be_non_negative():
    with Prefetcher(operator.truediv, 1) as p, pytest.raises(ZeroDivisionError):
        p.get((1, 0))
    with pytest.raises(ValueError, match="workers"):
        Prefetcher(abs, -1)


def test_next_keys_walk_tasks_then_steps_and_stop_at_the_stage_end():
    st = Stage("s", steps=3, iters=1, lr=1e-3, tasks_per_step=2)
    assert _next_keys(st, 0, 0, 0, 3) == [(0, 0, 1), (0, 1, 0), (0, 1, 1)]
    assert _next_keys(st, 1, 2, 0, 5) == [(1, 2, 1)]
    assert _next_keys(st, 0, 2, 1, 4) == []
