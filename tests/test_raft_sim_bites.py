"""The simulator's checks must bite: deliberately broken cores are caught
within a fixed range of seeds, and the correct core passes those seeds."""

from __future__ import annotations

import pytest

from metadata.raft.core import RaftNode
from tests.raftsim import run_seed
from tests.raftsim.broken import BROKEN

# variant -> (seed range, parameter overrides that make it likely, words in the report)
CASES = {
    "forget-vote": (
        range(0, 150),
        {"p_crash": 0.05, "pre_vote": False, "check_quorum": False, "p_dup": 0.1, "max_delay": 8},
        ("voted for", "two leaders"),
    ),
    "unconfirmed-read": (
        range(0, 40),
        {"p_partition": 0.03, "p_read": 0.5},
        ("stale read", "misses write"),
    ),
}


@pytest.mark.parametrize("variant", sorted(CASES))
def test_broken_core_is_caught(variant: str) -> None:
    seeds, overrides, words = CASES[variant]
    for seed in seeds:
        res = run_seed(seed, node_cls=BROKEN[variant], **overrides)
        if not res.ok:
            assert any(w in (res.violation or "") for w in words), res.violation
            good = run_seed(seed, node_cls=RaftNode, **overrides)
            assert good.ok, f"correct core fails seed {seed}: {good.violation}"
            return
    pytest.fail(f"simulator did not catch {variant} in seeds {seeds}")
