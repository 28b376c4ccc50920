"""metadata.registry: chunkserver soft state and chunk locations."""

from __future__ import annotations

import hashlib

import pytest

from metadata.registry import Registry

GB = 1 << 30


def cid(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def stat(used: int = 0, capacity: int = 100 * GB, load: int = 0, **extra: object) -> dict:
    return {
        "capacity": capacity,
        "used": used,
        "free": capacity - used,
        "chunks": 0,
        "load": load,
        **extra,
    }


def ep(i: int) -> str:
    return f"tcp://127.0.0.1:{7100 + i}"


def make(n: int = 3, now: float = 0.0, **labels_of: dict) -> Registry:
    reg = Registry()
    for i in range(n):
        reg.register(ep(i), f"n{i}", stat(), labels_of.get(f"s{i}"), now)
        reg.report(ep(i), [], True)
    return reg


def test_register_and_server_info() -> None:
    reg = Registry()
    reg.register(ep(1), "node1", stat(used=10 * GB, scrub=0.5), {"rack": "r1"}, now=5.0)
    (s,) = reg.servers()
    assert s.endpoint == ep(1) and s.node == "node1" and s.labels == {"rack": "r1"}
    assert s.state == "alive" and s.registered_at == 5.0 and s.last_seen == 5.0
    assert s.capacity == 100 * GB and s.used == 10 * GB and s.free == 90 * GB
    assert s.stat["scrub"] == 0.5  # anything else reported is kept
    assert s.used_pct == pytest.approx(10.0)
    assert not s.report_done
    d = s.to_dict()
    assert d["state"] == "alive" and d["stat"]["used"] == 10 * GB
    assert reg.server("tcp://nowhere:1") is None


def test_heartbeat_updates_and_unknown_must_register() -> None:
    reg = make(1)
    assert reg.heartbeat(ep(0), stat(used=GB, load=3), [cid(1)], [], now=7.0)
    s = reg.server(ep(0))
    assert s is not None and s.last_seen == 7.0 and s.load == 3 and s.used == GB
    assert reg.replicas(cid(1)) == [ep(0)]
    assert reg.heartbeat(ep(0), stat(), [], [cid(1)], now=8.0)
    assert reg.replicas(cid(1)) == []
    assert not reg.heartbeat("tcp://unknown:1", stat(), [], [], now=9.0)


def test_expire_marks_dead_and_register_revives() -> None:
    reg = make(3, now=0.0)
    reg.add_replica(cid(1), ep(0))
    reg.add_replica(cid(1), ep(1))
    reg.heartbeat(ep(1), stat(), now=20.0)
    reg.heartbeat(ep(2), stat(), now=20.0)
    assert reg.expire(25.0, timeout=10.0) == [ep(0)]
    assert reg.expire(26.0, timeout=10.0) == []  # only the newly dead
    assert reg.state(ep(0)) == "dead"
    assert reg.replicas(cid(1)) == [ep(1)]  # dead copy does not count
    assert sorted(reg.all_replicas(cid(1))) == [ep(0), ep(1)]  # but is remembered
    assert reg.live_count(cid(1)) == 1
    # a dead server's heartbeat is refused: it must re-register with a full report
    assert not reg.heartbeat(ep(0), stat(), now=27.0)
    reg.register(ep(0), "n0", stat(), None, now=28.0)
    assert reg.state(ep(0)) == "alive"
    assert reg.all_replicas(cid(1)) == [ep(1)]  # its locations come from the new report
    reg.report(ep(0), [cid(1)], True)
    assert sorted(reg.replicas(cid(1))) == [ep(0), ep(1)]


def test_reregister_clears_locations_and_reports_in_pages() -> None:
    reg = make(2)
    for n in range(5):
        reg.add_replica(cid(n), ep(0))
    reg.add_replica(cid(0), ep(1))
    assert reg.reports_complete()
    reg.register(ep(0), "n0", stat(), None, now=1.0)
    assert not reg.reports_complete()
    assert reg.replicas(cid(0)) == [ep(1)]
    assert reg.replicas(cid(3)) == []
    assert reg.report(ep(0), [cid(0), cid(1)], False)
    assert not reg.reports_complete()
    assert reg.report(ep(0), [cid(2)], True)
    assert reg.reports_complete()
    assert sorted(reg.replicas(cid(0))) == [ep(0), ep(1)]
    assert reg.replicas(cid(2)) == [ep(0)]
    assert reg.replicas(cid(3)) == []
    assert reg.server(ep(0)).replicas == 3  # type: ignore[union-attr]
    assert not reg.report("tcp://unknown:1", [cid(1)], True)


def test_reports_complete_after_leader_start() -> None:
    reg = Registry(started=100.0, settle=10.0)
    assert not reg.reports_complete(now=105.0)  # settle window: servers still registering
    reg.register(ep(0), "n0", stat(), None, now=101.0)
    reg.register(ep(1), "n1", stat(), None, now=101.0)
    reg.report(ep(0), [cid(1)], True)
    assert not reg.reports_complete(now=111.0)  # ep(1) has not finished
    # a server that dies mid-report does not block forever
    reg.heartbeat(ep(0), stat(), now=120.0)
    assert reg.expire(125.0, timeout=10.0) == [ep(1)]
    assert reg.reports_complete(now=125.0)
    assert reg.reports_complete()
    # a retired server does not block either
    reg.register(ep(2), "n2", stat(), None, now=126.0)
    assert not reg.reports_complete()
    reg.set_state(ep(2), "retired")
    assert reg.reports_complete()


def test_replicas_ordered_by_load_then_free() -> None:
    reg = Registry()
    reg.register(ep(0), "n0", stat(load=5), None, 0.0)
    reg.register(ep(1), "n1", stat(load=1, used=50 * GB), None, 0.0)
    reg.register(ep(2), "n2", stat(load=1, used=10 * GB), None, 0.0)
    for i in range(3):
        reg.add_replica(cid(1), ep(i))
    assert reg.replicas(cid(1)) == [ep(2), ep(1), ep(0)]
    assert reg.locate([cid(1), cid(2)]) == {cid(1): [ep(2), ep(1), ep(0)], cid(2): []}


def test_decommissioning_and_retired_states() -> None:
    reg = make(3)
    for i in range(3):
        reg.add_replica(cid(1), ep(i))
    reg.set_state(ep(0), "decommissioning")
    assert reg.state(ep(0)) == "decommissioning"
    assert ep(0) not in reg.replicas(cid(1))  # does not count
    assert reg.readable(cid(1))[-1] == ep(0)  # but still serves reads, last
    assert reg.locate([cid(1)])[cid(1)][-1] == ep(0)
    assert len(reg.all_replicas(cid(1))) == 3
    # decommissioning survives death and re-registration
    reg.set_state(ep(0), "dead")
    assert reg.state(ep(0)) == "dead"
    assert ep(0) not in reg.readable(cid(1))
    reg.register(ep(0), "n0", stat(), None, 1.0)
    assert reg.state(ep(0)) == "decommissioning"
    reg.set_state(ep(0), "retired")
    assert reg.state(ep(0)) == "retired"
    reg.set_state(ep(0), "alive")
    assert reg.state(ep(0)) == "alive"
    with pytest.raises(ValueError):
        reg.set_state(ep(0), "sleepy")
    with pytest.raises(KeyError):
        reg.set_state("tcp://unknown:1", "retired")


def test_mark_corrupt_stops_counting_until_fresh_copy() -> None:
    reg = make(2)
    reg.add_replica(cid(1), ep(0))
    reg.add_replica(cid(1), ep(1))
    assert reg.mark_corrupt(cid(1), ep(0))
    assert reg.replicas(cid(1)) == [ep(1)]
    assert reg.corrupt_replicas(cid(1)) == [ep(0)]
    assert ep(0) not in reg.locate([cid(1)])[cid(1)]
    assert not reg.mark_corrupt(cid(2), ep(0))  # no such copy: nothing recorded
    assert reg.corrupt_replicas(cid(2)) == []
    # a fresh copy written there (e.g. a repair after deletion) counts again
    reg.heartbeat(ep(0), stat(), [cid(1)], [], now=1.0)
    assert sorted(reg.replicas(cid(1))) == [ep(0), ep(1)]
    assert reg.corrupt_replicas(cid(1)) == []
    # removal clears a corrupt mark
    reg.mark_corrupt(cid(1), ep(0))
    reg.heartbeat(ep(0), stat(), [], [cid(1)], now=2.0)
    assert reg.corrupt_replicas(cid(1)) == [] and reg.replicas(cid(1)) == [ep(1)]
    assert reg.server(ep(0)).replicas == 0  # type: ignore[union-attr]


def test_corrupt_mark_survives_reregister_only_if_still_listed() -> None:
    reg = make(2)
    for n in (1, 2):
        reg.add_replica(cid(n), ep(0))
        reg.mark_corrupt(cid(n), ep(0))
    reg.register(ep(0), "n0", stat(), None, now=1.0)
    reg.report(ep(0), [cid(1), cid(3)], True)  # cid(2) is gone from its disk
    assert reg.corrupt_replicas(cid(1)) == [ep(0)]
    assert reg.replicas(cid(1)) == []  # the listed bad copy still does not count
    assert reg.corrupt_replicas(cid(2)) == []
    assert reg.replicas(cid(3)) == [ep(0)]
    assert reg.server(ep(0)).replicas == 2  # type: ignore[union-attr]


def test_add_remove_replica() -> None:
    reg = make(2)
    assert reg.add_replica(cid(1), ep(0))
    assert reg.add_replica(cid(1), ep(0))  # idempotent
    assert reg.all_replicas(cid(1)) == [ep(0)]
    assert not reg.add_replica(cid(1), "tcp://unknown:1")
    assert reg.remove_replica(cid(1), ep(0))
    assert not reg.remove_replica(cid(1), ep(0))
    assert len(reg) == 0


def test_chunk_ids_validated_and_stored_compactly() -> None:
    reg = make(1)
    with pytest.raises(ValueError):
        reg.add_replica("abc", ep(0))
    with pytest.raises(ValueError):
        reg.add_replica("z" * 64, ep(0))
    reg.add_replica(cid(1), ep(0))
    ((k, v),) = reg._loc.items()
    assert isinstance(k, bytes) and len(k) == 32
    assert v == (0,)
    assert list(reg.iter_chunks()) == [cid(1)]
    assert list(reg.chunks_on(ep(0))) == [cid(1)]
    assert list(reg.chunks_on("tcp://unknown:1")) == []


def test_summary() -> None:
    reg = Registry()
    reg.register(ep(0), "n0", stat(used=10 * GB), None, 0.0)
    reg.register(ep(1), "n1", stat(used=30 * GB), None, 0.0)
    reg.register(ep(2), "n2", stat(used=50 * GB), None, 0.0)
    reg.set_state(ep(2), "dead")
    reg.add_replica(cid(1), ep(0))
    s = reg.summary()
    assert s["servers"] == 3
    assert s["states"] == {"alive": 2, "dead": 1, "decommissioning": 0, "retired": 0}
    assert s["capacity"] == 200 * GB and s["used"] == 40 * GB
    assert s["used_pct"] == pytest.approx(20.0)
    assert s["chunks"] == 1
    assert s["reports_complete"] is False
