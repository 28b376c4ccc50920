"""Randomized deterministic simulation of the Raft core (see tests/raftsim).

DFS_SIM_SEEDS (how many, default 500) seeds starting at DFS_SIM_SEED_START
(default 0). A failure names the command that replays the seed."""

from __future__ import annotations

import os

import pytest

from tests.raftsim import run_seed

SEED_START = int(os.environ.get("DFS_SIM_SEED_START", "0"))
SEEDS = int(os.environ.get("DFS_SIM_SEEDS", "500"))


@pytest.mark.parametrize("seed", range(SEED_START, SEED_START + SEEDS))
def test_sim_seed(seed: int) -> None:
    res = run_seed(seed)
    assert res.ok, f"seed {seed}: {res.violation}\n  replay: {res.replay()}"
    assert res.stats["writes_acked"] > 0
