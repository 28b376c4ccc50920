"""metadata.placement: choosing servers for new chunks, ordering reads."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.errors import DfsError
from metadata.placement import CHUNK_MARGIN, order_for_read, place, spread
from metadata.registry import Registry

GB = 1 << 30


def ep(i: int) -> str:
    return f"tcp://127.0.0.1:{7100 + i}"


def stat(free: int = 50 * GB, capacity: int = 100 * GB, load: int = 0) -> dict:
    return {"capacity": capacity, "used": capacity - free, "free": free, "load": load}


def cluster(n: int, labels=None, free=None, load=None) -> Registry:
    reg = Registry()
    for i in range(n):
        reg.register(
            ep(i),
            f"n{i}",
            stat(free=free[i] if free else 50 * GB, load=load[i] if load else 0),
            labels(i) if labels else None,
            0.0,
        )
        reg.report(ep(i), [], True)
    return reg


def test_chains_of_distinct_alive_servers() -> None:
    reg = cluster(5)
    chains = place(reg, 20, 3, random.Random(1))
    assert len(chains) == 20
    for c in chains:
        assert len(c) == 3 and len(set(c)) == 3


def test_skips_dead_decommissioning_retired_full_and_excluded() -> None:
    reg = cluster(7, free=[50 * GB] * 6 + [CHUNK_MARGIN - 1])
    reg.set_state(ep(0), "dead")
    reg.set_state(ep(1), "decommissioning")
    reg.set_state(ep(2), "retired")
    chains = place(reg, 50, 3, random.Random(2), exclude=[ep(3)])
    used = {e for c in chains for e in c}
    assert used == {ep(4), ep(5)}  # ep(6) is full
    assert all(len(c) == 2 for c in chains)  # shorter chains: caller decides


def test_zero_servers_is_a_clear_error() -> None:
    with pytest.raises(DfsError) as e:
        place(Registry(), 1, 3, random.Random(0))
    assert e.value.code == "UNAVAILABLE"
    reg = cluster(2, free=[0, 100])
    with pytest.raises(DfsError) as e:
        place(reg, 1, 3, random.Random(0))
    assert e.value.code == "ENOSPC"
    assert place(reg, 0, 3, random.Random(0)) == []
    with pytest.raises(ValueError):
        place(reg, 1, 0, random.Random(0))


def test_spreads_over_racks_before_reusing_one() -> None:
    # 3 racks of 3 servers: every chain of 3 lands on 3 racks
    reg = cluster(9, labels=lambda i: {"rack": f"r{i % 3}"})
    for c in place(reg, 200, 3, random.Random(3)):
        assert len({int(e.rsplit(":", 1)[1]) % 3 for e in c}) == 3
    # 2 racks, rep 3: both racks used, one twice
    reg = cluster(6, labels=lambda i: {"rack": f"r{i % 2}"})
    for c in place(reg, 200, 3, random.Random(4)):
        assert len({int(e.rsplit(":", 1)[1]) % 2 for e in c}) == 2


def test_spreads_over_zones_then_racks() -> None:
    # zone z0 has racks a,b; zone z1 has rack c. rep 3 -> both zones, 3 racks
    racks = ["a", "a", "b", "b", "c", "c"]
    zones = {"a": "z0", "b": "z0", "c": "z1"}
    reg = cluster(6, labels=lambda i: {"rack": racks[i], "zone": zones[racks[i]]})
    for c in place(reg, 200, 3, random.Random(5)):
        rs = [racks[int(e.rsplit(":", 1)[1]) - 7100] for e in c]
        assert {zones[r] for r in rs} == {"z0", "z1"}
        assert len(set(rs)) == 3


def test_spreads_over_nodes() -> None:
    # two endpoints on one node (two disks): a chain of 2 avoids the shared node
    reg = Registry()
    for i, node in enumerate(["h1", "h1", "h2"]):
        reg.register(ep(i), node, stat(), None, 0.0)
    for c in place(reg, 100, 2, random.Random(6)):
        assert ep(2) in c


def test_weighted_by_free_space() -> None:
    reg = cluster(2, free=[90 * GB, 10 * GB])
    firsts = Counter(c[0] for c in place(reg, 2000, 1, random.Random(7), size=0))
    assert firsts[ep(0)] > 5 * firsts[ep(1)]
    assert firsts[ep(1)] > 0


def test_batch_charges_estimated_size() -> None:
    # room for only 3 chunks (plus margin) on the small server in one batch
    reg = cluster(2, free=[100 * GB, CHUNK_MARGIN + 3 * (1 << 20)])
    chains = place(reg, 100, 1, random.Random(8))
    assert Counter(c[0] for c in chains)[ep(1)] <= 4


def test_prefer_goes_first() -> None:
    reg = cluster(4)
    for c in place(reg, 20, 3, random.Random(9), prefer=ep(2)):
        assert c[0] == ep(2)


def test_deterministic_for_a_seed() -> None:
    reg = cluster(6, labels=lambda i: {"rack": f"r{i % 3}"})
    assert place(reg, 30, 3, random.Random(10)) == place(reg, 30, 3, random.Random(10))


def test_order_for_read() -> None:
    reg = cluster(5, load=[3, 1, 1, 0, 0], free=[50 * GB, 10 * GB, 20 * GB, 5 * GB, 5 * GB])
    reg.set_state(ep(3), "decommissioning")
    reg.set_state(ep(4), "dead")
    got = order_for_read(reg, [ep(0), ep(1), ep(2), ep(3), ep(4), "tcp://unknown:1"])
    assert got == [ep(2), ep(1), ep(0), ep(3)]


def test_spread() -> None:
    assert spread([("z", "a", "n1"), ("z", "a", "n2"), ("z", "b", "n3")]) == (1, 2, 3)


server_st = st.fixed_dictionaries(
    {
        "state": st.sampled_from(["alive", "alive", "alive", "dead", "decommissioning", "retired"]),
        "free": st.sampled_from([0, CHUNK_MARGIN - 1, CHUNK_MARGIN, 10 * GB, 80 * GB]),
        "rack": st.sampled_from([None, "r0", "r1", "r2"]),
        "node": st.sampled_from(["h0", "h1", "h2", "h3", "h4"]),
    }
)


@settings(max_examples=150, deadline=None)
@given(
    servers=st.lists(server_st, min_size=1, max_size=10),
    count=st.integers(1, 20),
    rep=st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_property_placement(servers, count, rep, seed) -> None:
    reg = Registry()
    for i, s in enumerate(servers):
        labels = {"rack": s["rack"]} if s["rack"] else None
        reg.register(ep(i), s["node"], stat(free=s["free"]), labels, 0.0)
        if s["state"] != "alive":
            reg.set_state(ep(i), s["state"])
    ok = {
        ep(i) for i, s in enumerate(servers) if s["state"] == "alive" and s["free"] >= CHUNK_MARGIN
    }
    try:
        chains = place(reg, count, rep, random.Random(seed), size=0)
    except DfsError:
        assert not ok
        return
    assert len(chains) == count
    racks = {ep(i): s["rack"] for i, s in enumerate(servers)}
    n_racks = len({racks[e] for e in ok})
    for c in chains:
        assert len(c) == len(set(c))  # never two copies on one server
        assert set(c) <= ok  # never dead/decommissioning/retired/full
        assert len(c) == min(rep, len(ok))
        assert len({racks[e] for e in c}) == min(len(c), n_racks)  # racks spread first
