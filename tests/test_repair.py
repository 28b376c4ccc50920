"""metadata.repair: repair, trim, rebalance, decommission plans and fsck."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from metadata.registry import Registry
from metadata.repair import (
    Copy,
    Limits,
    Move,
    Remove,
    decommission_done,
    fsck,
    plan_decommission,
    plan_rebalance,
    plan_repairs,
    plan_trims,
    safe_to_remove,
)

GB = 1 << 30
MB = 1 << 20


def cid(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def ep(i: int) -> str:
    return f"tcp://127.0.0.1:{7100 + i}"


def stat(used: int = 0, capacity: int = 100 * GB, load: int = 0) -> dict:
    return {"capacity": capacity, "used": used, "free": capacity - used, "load": load}


def cluster(n: int, labels=None, used=None, load=None, capacity: int = 100 * GB) -> Registry:
    reg = Registry()
    for i in range(n):
        reg.register(
            ep(i),
            f"n{i}",
            stat(used=used[i] if used else 0, capacity=capacity, load=load[i] if load else 0),
            labels(i) if labels else None,
            0.0,
        )
        reg.report(ep(i), [], True)
    return reg


def put(reg: Registry, n: int, *servers: int) -> str:
    for s in servers:
        reg.add_replica(cid(n), ep(s))
    return cid(n)


UNLIMITED = Limits(per_server=10**9, max_total=10**9)


# -- repairs -------------------------------------------------------------------------


def test_repair_after_server_death() -> None:
    reg = cluster(4)
    ids = [put(reg, n, 0, 1, 2) for n in range(5)]
    reg.set_state(ep(0), "dead")
    plan = plan_repairs(reg, [(c, 3) for c in ids], UNLIMITED)
    assert sorted(p.chunk for p in plan) == sorted(ids)
    for p in plan:
        assert p.source in (ep(1), ep(2))
        assert p.targets == (ep(3),)  # the only server without a copy (dead ep(0) holds one)
    assert plan.missing == [] and plan.complete


def test_healthy_chunks_need_nothing() -> None:
    reg = cluster(3)
    ids = [put(reg, n, 0, 1, 2) for n in range(3)]
    assert plan_repairs(reg, [(c, 3) for c in ids]) == []
    assert plan_repairs(reg, [(c, 2) for c in ids]) == []


def test_most_endangered_first() -> None:
    reg = cluster(6)
    two_left = [put(reg, n, 0, 1) for n in range(3)]
    one_left = [put(reg, 10 + n, 2) for n in range(3)]
    wanted = [(c, 3) for c in two_left + one_left]
    plan = plan_repairs(reg, wanted, Limits(per_server=100, max_total=3))
    assert [p.chunk for p in plan] == sorted(one_left, key=lambda c: c)
    assert all(len(p.targets) == 2 for p in plan)
    assert plan.deferred == 3
    full = plan_repairs(reg, wanted, UNLIMITED)
    assert [p.chunk for p in full][:3] == [p.chunk for p in plan]


def test_source_is_least_loaded_live_copy() -> None:
    reg = cluster(4, load=[9, 1, 5, 0])
    c = put(reg, 1, 0, 1, 2)
    plan = plan_repairs(reg, [(c, 4)], UNLIMITED)
    assert plan == [Copy(c, ep(1), (ep(3),))]


def test_per_server_limit_and_busy() -> None:
    reg = cluster(6)
    ids = [put(reg, n, 0) for n in range(20)]  # one copy each, all on ep(0)
    plan = plan_repairs(reg, [(c, 2) for c in ids], Limits(per_server=2, max_total=100))
    assert len(plan) == 2  # the only source takes part in 2 copies
    assert plan.deferred == 18
    use = Counter()
    for p in plan:
        use[p.source] += 1
        use.update(p.targets)
    assert max(use.values()) <= 2
    # copies already running count against the limit
    plan = plan_repairs(reg, [(c, 2) for c in ids], Limits(per_server=2), busy={ep(0): 1})
    assert len(plan) == 1
    # targets are limited too: 2 sources, 1 possible target
    reg = cluster(3)
    ids = [put(reg, n, n % 2) for n in range(6)]
    plan = plan_repairs(reg, [(c, 3) for c in ids], Limits(per_server=1, max_total=100))
    use = Counter()
    for p in plan:
        use[p.source] += 1
        use.update(p.targets)
    assert max(use.values()) <= 1


def test_missing_chunks_reported_not_planned() -> None:
    reg = cluster(3)
    gone = put(reg, 1, 0)
    fine = put(reg, 2, 1)
    reg.set_state(ep(0), "dead")
    nowhere = cid(3)
    plan = plan_repairs(reg, [(gone, 2), (fine, 2), (nowhere, 2)], UNLIMITED)
    assert [p.chunk for p in plan] == [fine]
    assert sorted(plan.missing) == sorted([gone, nowhere])


def test_incomplete_reports_fail_closed() -> None:
    reg = cluster(3)
    c = put(reg, 1, 0)
    reg.register(ep(1), "n1", stat(), None, 1.0)  # re-registered: report in progress
    plan = plan_repairs(reg, [(c, 2), (cid(9), 2)], UNLIMITED)
    assert plan == [] and not plan.complete and plan.missing == []
    forced = plan_repairs(reg, [(c, 2)], UNLIMITED, force=True)
    assert len(forced) == 1
    report = fsck(reg, [(c, 2), (cid(9), 2)])
    assert not report["complete"] and not report["ok"]
    assert report["missing"] == 0 and report["unknown"] == 1
    assert not decommission_done(reg, ep(0), [(c, 1)])


def test_decommissioning_copies_do_not_count_but_serve_as_source() -> None:
    reg = cluster(5)
    c1 = put(reg, 1, 0, 1, 2)
    c2 = put(reg, 2, 0)  # only copy on the leaving server
    reg.set_state(ep(0), "decommissioning")
    plan = plan_repairs(reg, [(c1, 3), (c2, 2)], UNLIMITED)
    by = {p.chunk: p for p in plan}
    assert by[c2].source == ep(0) and len(by[c2].targets) == 2
    assert by[c1].source in (ep(1), ep(2)) and len(by[c1].targets) == 1
    assert plan[0].chunk == c2  # zero counted copies: most endangered
    for p in plan:
        assert ep(0) not in p.targets
    assert plan.missing == []


def test_corrupt_copy_does_not_count_and_is_never_a_target() -> None:
    reg = cluster(4)
    c = put(reg, 1, 0, 1, 2)
    reg.mark_corrupt(c, ep(0))
    plan = plan_repairs(reg, [(c, 3)], UNLIMITED)
    assert plan == [Copy(c, plan[0].source, (ep(3),))]
    assert plan[0].source in (ep(1), ep(2))
    reg.mark_corrupt(c, ep(1))
    reg.mark_corrupt(c, ep(2))
    plan = plan_repairs(reg, [(c, 3)], UNLIMITED)
    assert plan == [] and plan.missing == [c]


def test_repair_targets_honour_racks() -> None:
    reg = cluster(6, labels=lambda i: {"rack": f"r{i // 2}"})  # r0: 0,1 r1: 2,3 r2: 4,5
    ids = [put(reg, n, 0, 2) for n in range(30)]  # copies on r0 and r1
    plan = plan_repairs(reg, [(c, 3) for c in ids], UNLIMITED, rng=random.Random(3))
    assert len(plan) == 30
    for p in plan:
        assert p.targets[0] in (ep(4), ep(5))  # r2: the rack without a copy


def test_unplaceable_when_too_few_servers() -> None:
    reg = cluster(2)
    c = put(reg, 1, 0, 1)
    plan = plan_repairs(reg, [(c, 3)], UNLIMITED)
    assert plan == [] and plan.unplaceable == [c]
    reg = cluster(3)
    c = put(reg, 1, 0)
    plan = plan_repairs(reg, [(c, 4)], UNLIMITED)
    assert len(plan[0].targets) == 2  # as many as exist


def test_repairs_deterministic() -> None:
    reg = cluster(8, labels=lambda i: {"rack": f"r{i % 3}"})
    ids = [put(reg, n, n % 8) for n in range(40)]
    w = [(c, 3) for c in ids]
    a = plan_repairs(reg, w, UNLIMITED, rng=random.Random(5))
    b = plan_repairs(reg, w, UNLIMITED, rng=random.Random(5))
    assert a == b


# -- trims ---------------------------------------------------------------------------


def test_trims_remove_extra_copies_only() -> None:
    reg = cluster(5, used=[10 * GB, 90 * GB, 20 * GB, 30 * GB, 40 * GB])
    c = put(reg, 1, 0, 1, 2, 3)
    ok = put(reg, 2, 0, 1, 2)
    plan = plan_trims(reg, [(c, 3), (ok, 3)])
    assert plan == [Remove(c, ep(1))]  # the fullest server
    assert plan_trims(reg, [(c, 1)]) == [Remove(c, ep(1)), Remove(c, ep(3)), Remove(c, ep(2))]
    assert plan_trims(reg, [(c, 0)]) == []  # unreferenced: GC's business
    assert len(plan_trims(reg, [(c, 1), (ok, 1)], max_total=3)) == 3


def test_trims_keep_failure_domain_spread() -> None:
    # ep(0), ep(1) on rack a; ep(2) on b; ep(3) on c. ep(2) is fullest but the
    # copy to drop is one of rack a's.
    reg = cluster(
        4,
        labels=lambda i: {"rack": "aabc"[i]},
        used=[10 * GB, 20 * GB, 90 * GB, 10 * GB],
    )
    c = put(reg, 1, 0, 1, 2, 3)
    assert plan_trims(reg, [(c, 3)]) == [Remove(c, ep(1))]


def test_trims_ignore_dead_and_decommissioning_copies() -> None:
    reg = cluster(5)
    c = put(reg, 1, 0, 1, 2, 3, 4)
    reg.set_state(ep(3), "dead")
    reg.set_state(ep(4), "decommissioning")
    assert plan_trims(reg, [(c, 3)]) == []  # 3 live copies: nothing to remove
    reg.set_state(ep(2), "dead")
    assert plan_trims(reg, [(c, 3)]) == []


def test_trims_remove_corrupt_copies_once_healthy() -> None:
    reg = cluster(4)
    c = put(reg, 1, 0, 1, 2)
    reg.mark_corrupt(c, ep(0))
    assert plan_trims(reg, [(c, 3)]) == []  # under-replicated: keep the evidence
    reg.add_replica(c, ep(3))
    assert plan_trims(reg, [(c, 3)]) == [Remove(c, ep(0))]


def test_safe_to_remove() -> None:
    reg = cluster(3)
    c = put(reg, 1, 0, 1, 2)
    assert safe_to_remove(reg, c, ep(0), 2)
    assert not safe_to_remove(reg, c, ep(0), 3)
    assert safe_to_remove(reg, c, "tcp://other:1", 3)


# -- rebalance -------------------------------------------------------------------------


class Model:
    """A cluster where used bytes are exactly the sizes of the chunks held."""

    def __init__(self, n: int, capacity: int, labels=None) -> None:
        self.reg = Registry()
        self.n = n
        self.capacity = capacity
        self.held: dict[str, set[int]] = {}
        self.size: dict[str, int] = {}
        self.rep: dict[str, int] = {}
        for i in range(n):
            self.reg.register(ep(i), f"n{i}", stat(0, capacity), labels(i) if labels else None, 0)
            self.reg.report(ep(i), [], True)

    def add_chunk(self, c: str, size: int, rep: int, servers: list[int]) -> None:
        self.size[c], self.rep[c] = size, rep
        self.held[c] = set()
        for s in servers:
            self.copy(c, s)

    def used(self, s: int) -> int:
        return sum(self.size[c] for c, h in self.held.items() if s in h)

    def refresh(self, s: int) -> None:
        self.reg.heartbeat(ep(s), stat(self.used(s), self.capacity), now=0)

    def copy(self, c: str, s: int) -> None:
        assert s not in self.held[c], "second copy on one server"
        self.held[c].add(s)
        self.reg.add_replica(c, ep(s))
        self.refresh(s)

    def remove(self, c: str, s: int) -> None:
        self.held[c].discard(s)
        self.reg.remove_replica(c, ep(s))
        self.refresh(s)

    def wanted(self) -> list[tuple[str, int, int]]:
        return [(c, self.rep[c], self.size[c]) for c in self.held]

    def pcts(self) -> list[float]:
        return [100.0 * self.used(i) / self.capacity for i in range(self.n)]

    def apply(self, moves: list[Move]) -> None:
        idx = {ep(i): i for i in range(self.n)}
        for m in moves:
            self.copy(m.chunk, idx[m.target])
            assert len(self.reg.replicas(m.chunk)) >= self.rep[m.chunk]
            assert safe_to_remove(self.reg, m.chunk, m.source, self.rep[m.chunk])
            self.remove(m.chunk, idx[m.source])
            assert len(self.reg.replicas(m.chunk)) >= self.rep[m.chunk]


def test_rebalance_moves_to_new_empty_servers() -> None:
    m = Model(6, capacity=1000 * MB)
    rng = random.Random(1)
    for n in range(300):
        m.add_chunk(cid(n), 4 * MB, 2, rng.sample(range(3), 2))  # only the 3 old servers
    before = m.pcts()
    assert max(before) > 70 and min(before) == 0
    moves = plan_rebalance(m.reg, m.wanted(), threshold_pct=10, limits=UNLIMITED, margin=0)
    assert moves and all(isinstance(x, Move) for x in moves)
    m.apply(moves)
    mean = sum(before) / 6
    assert all(abs(p - mean) <= 10 for p in m.pcts()), m.pcts()
    # a second pass has nothing to do
    assert plan_rebalance(m.reg, m.wanted(), 10, UNLIMITED, margin=0) == []


def test_rebalance_only_over_full_server() -> None:
    m = Model(5, capacity=1000 * MB)
    rng = random.Random(2)
    for n in range(100):
        m.add_chunk(cid(n), 4 * MB, 1, [0] if n < 80 else [rng.randrange(1, 5)])
    assert m.pcts()[0] == 32.0
    moves = plan_rebalance(m.reg, m.wanted(), 10, UNLIMITED, margin=0)
    m.apply(moves)
    mean = 400 / 1000 * 100 / 5
    assert all(abs(p - mean) <= 10 for p in m.pcts())
    assert all(x.source == ep(0) for x in moves)


def test_rebalance_respects_limits_and_is_deterministic() -> None:
    m = Model(6, capacity=1000 * MB)
    for n in range(200):
        m.add_chunk(cid(n), 4 * MB, 1, [n % 2])
    w = m.wanted()
    a = plan_rebalance(m.reg, w, 10, Limits(per_server=3, max_total=5), rng=random.Random(7))
    b = plan_rebalance(m.reg, w, 10, Limits(per_server=3, max_total=5), rng=random.Random(7))
    assert a == b and len(a) == 5
    use = Counter()
    for x in a:
        use[x.source] += 1
        use[x.target] += 1
    assert max(use.values()) <= 3


def test_rebalance_never_targets_a_holder_nor_narrows_racks() -> None:
    # racks: 0,1 on a; 2,3 on b; 4 on c (empty). Chunks on (0, 2) and (1, 3).
    m = Model(5, capacity=1000 * MB, labels=lambda i: {"rack": "aabbc"[i]})
    for n in range(100):
        m.add_chunk(cid(n), 4 * MB, 2, [0, 2] if n % 2 else [1, 3])
    moves = plan_rebalance(m.reg, m.wanted(), 5, UNLIMITED, margin=0)
    assert moves
    for x in moves:
        assert x.target == ep(4)  # within rack a or b would narrow the spread
    m.apply(moves)


def test_rebalance_nothing_to_do() -> None:
    m = Model(3, capacity=1000 * MB)
    for n in range(30):
        m.add_chunk(cid(n), 4 * MB, 1, [n % 3])
    assert plan_rebalance(m.reg, m.wanted(), 10, UNLIMITED, margin=0) == []
    assert plan_rebalance(Registry(), [], 10) == []


def test_rebalance_size_map_and_default() -> None:
    m = Model(2, capacity=1000 * MB)
    for n in range(50):
        m.add_chunk(cid(n), 10 * MB, 1, [0])
    two = [(c, 1) for c in m.held]
    moves = plan_rebalance(m.reg, two, 10, UNLIMITED, sizes=m.size, margin=0)
    assert all(x.size == 10 * MB for x in moves)
    m.apply(moves)
    assert all(abs(p - 25) <= 10 for p in m.pcts())


# -- decommission ------------------------------------------------------------------------


def test_decommission_plan_and_done() -> None:
    reg = cluster(5)
    ids = [put(reg, n, 0, 1 + n % 4) for n in range(8)]  # each chunk on ep(0) + one other
    other = put(reg, 99, 1, 2)
    wanted = [(c, 2) for c in [*ids, other]]
    reg.set_state(ep(0), "decommissioning")
    assert not decommission_done(reg, ep(0), wanted)
    plan = plan_decommission(reg, ep(0), wanted, UNLIMITED)
    assert sorted(p.chunk for p in plan) == sorted(ids)
    for p in plan:
        assert p.source != ep(0) and ep(0) not in p.targets
        assert p.source in reg.replicas(p.chunk)
        assert not set(p.targets) & set(reg.all_replicas(p.chunk))
        for t in p.targets:
            reg.add_replica(p.chunk, t)
    assert decommission_done(reg, ep(0), wanted)
    assert plan_decommission(reg, ep(0), wanted, UNLIMITED) == []
    reg.set_state(ep(0), "retired")


def test_decommission_only_copy_is_the_source() -> None:
    reg = cluster(3)
    c = put(reg, 1, 0)
    plan = plan_decommission(reg, ep(0), [(c, 2)], UNLIMITED)  # before set_state, too
    assert plan == [Copy(c, ep(0), plan[0].targets)]
    assert len(plan[0].targets) == 2 and ep(0) not in plan[0].targets
    assert not decommission_done(reg, ep(0), [(c, 2)])
    assert not decommission_done(reg, "tcp://unknown:1", [(c, 2)])


# -- fsck --------------------------------------------------------------------------------


def test_fsck_counts_and_lists() -> None:
    reg = cluster(4)
    healthy = put(reg, 1, 0, 1, 2)
    over = put(reg, 2, 0, 1, 2, 3)
    under = [put(reg, 10 + n, 0) for n in range(5)]
    lost = put(reg, 3, 3)
    reg.set_state(ep(3), "dead")
    corrupt = put(reg, 4, 0, 1)
    reg.mark_corrupt(corrupt, ep(1))
    wanted = [(healthy, 3), (over, 2), *[(c, 3) for c in under], (lost, 1), (corrupt, 2)]
    r = fsck(reg, wanted, cap=3)
    assert r["complete"] and not r["ok"]
    assert r["total"] == 9
    assert r["healthy"] == 2 and r["over_replicated"] == 1
    assert r["under_replicated"] == 6 and r["missing"] == 1
    assert r["corrupt_replicas"] == 1
    assert len(r["lists"]["under_replicated"]) == 3
    assert r["lists"]["missing"] == [lost]
    assert fsck(reg, [(healthy, 3)])["ok"]


# -- properties --------------------------------------------------------------------------

STATES = ["alive", "alive", "alive", "dead", "decommissioning"]


@st.composite
def scenario(draw):
    n = draw(st.integers(1, 8))
    states = draw(st.lists(st.sampled_from(STATES), min_size=n, max_size=n))
    racks = draw(st.lists(st.sampled_from([None, "a", "b", "c"]), min_size=n, max_size=n))
    chunks = draw(
        st.lists(
            st.tuples(
                st.sets(st.integers(0, n - 1), max_size=n),  # good copies
                st.sets(st.integers(0, n - 1), max_size=2),  # corrupt copies
                st.integers(0, 4),  # rep
            ),
            max_size=25,
        )
    )
    return n, states, racks, chunks


def build(n, states, racks, chunks) -> tuple[Registry, list[tuple[str, int]]]:
    reg = Registry()
    for i in range(n):
        reg.register(ep(i), f"n{i}", stat(), {"rack": racks[i]} if racks[i] else None, 0)
        reg.report(ep(i), [], True)
    wanted = []
    for k, (good, bad, rep) in enumerate(chunks):
        c = cid(k)
        for s in good | bad:
            reg.add_replica(c, ep(s))
        for s in bad:
            reg.mark_corrupt(c, ep(s))
        wanted.append((c, rep))
    for i in range(n):
        if states[i] != "alive":
            reg.set_state(ep(i), states[i])
    return reg, wanted


@settings(max_examples=200, deadline=None)
@given(sc=scenario(), per=st.integers(1, 4), seed=st.integers(0, 1000))
def test_property_repairs_never_target_a_holder(sc, per, seed) -> None:
    reg, wanted = build(*sc)
    limits = Limits(per_server=per, max_total=50)
    plans = [
        plan_repairs(reg, wanted, limits, rng=random.Random(seed)),
        plan_decommission(reg, ep(0), wanted, limits, rng=random.Random(seed)),
    ]
    for plan in plans:
        use = Counter()
        seen = set()
        for p in plan:
            assert p.chunk not in seen
            seen.add(p.chunk)
            holders = set(reg.all_replicas(p.chunk)) | set(reg.corrupt_replicas(p.chunk))
            assert p.targets and not set(p.targets) & holders
            assert len(set(p.targets)) == len(p.targets)
            assert p.source in reg.readable(p.chunk)
            for t in p.targets:
                assert reg.state(t) == "alive"
            use[p.source] += 1
            use.update(p.targets)
        assert all(v <= per for v in use.values())
    repair = plans[0]
    reps = dict(wanted)
    for p in repair:
        assert len(reg.replicas(p.chunk)) + len(p.targets) <= reps[p.chunk]
    for c in repair.missing:
        assert reg.readable(c) == []


@settings(max_examples=200, deadline=None)
@given(sc=scenario())
def test_property_trims_never_go_below_rep(sc) -> None:
    reg, wanted = build(*sc)
    before = {c: len(reg.replicas(c)) for c, _ in wanted}
    for r in plan_trims(reg, wanted):
        assert r.server in reg.all_replicas(r.chunk) or r.server in reg.corrupt_replicas(r.chunk)
        reg.remove_replica(r.chunk, r.server)
    for c, rep in wanted:
        after = len(reg.replicas(c))
        assert after == (rep if 0 < rep < before[c] else before[c])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(3, 7),
    rep=st.integers(1, 2),
    count=st.integers(20, 120),
    skew=st.lists(st.integers(0, 10), min_size=7, max_size=7),
    seed=st.integers(0, 1000),
    threshold=st.sampled_from([5.0, 10.0, 20.0]),
)
def test_property_rebalance_safe_and_converges(n, rep, count, skew, seed, threshold) -> None:
    rng = random.Random(seed)
    m = Model(n, capacity=4000 * MB)
    weights = [w + 0.01 for w in skew[:n]]
    for k in range(count):
        servers: list[int] = []
        while len(servers) < rep:
            s = rng.choices(range(n), weights)[0]
            if s not in servers:
                servers.append(s)
        m.add_chunk(cid(k), rng.choice([2, 4, 8]) * MB, rep, servers)
    moves = plan_rebalance(
        m.reg, m.wanted(), threshold, UNLIMITED, rng=random.Random(seed), margin=0
    )
    m.apply(moves)  # checks: no second copy on a server, never below rep
    pcts = m.pcts()
    mean = sum(pcts) / n
    assert all(abs(p - mean) <= threshold + 1e-9 for p in pcts), (pcts, mean)
