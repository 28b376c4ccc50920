"""The Raft WAL: restart recovery, torn and corrupt tails, snapshots and compaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from metadata.raft.messages import Entry, HardState, Snapshot
from metadata.raft.storage import PREFILL_BYTES, RaftStorage


def ents(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, data=f"e{i}".encode()) for i in range(lo, hi + 1)]


def test_restart_recovers(tmp_path: Path) -> None:
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 2, 0), ents(1, 10), None)
    s.save(HardState(1, 2, 8), [], None)
    s.close()
    st = RaftStorage(tmp_path).load()
    assert st.hard_state == HardState(1, 2, 8)
    assert [e.index for e in st.entries] == list(range(1, 11))
    assert st.entries[4].data == b"e5"


def test_conflicting_suffix_is_replaced(tmp_path: Path) -> None:
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 1, 0), ents(1, 10, term=1), None)
    s.save(HardState(2, 3, 0), ents(6, 7, term=2), None)
    s.close()
    st = RaftStorage(tmp_path).load()
    assert [(e.index, e.term) for e in st.entries] == [(i, 1) for i in range(1, 6)] + [
        (6, 2),
        (7, 2),
    ]


def test_records_are_written_over_zeros_and_restart_continues_after_them(
    tmp_path: Path,
) -> None:
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 1, 0), ents(1, 5), None)
    end = s._size
    s.close()
    wal = next(tmp_path.glob("wal-*.log"))
    raw = wal.read_bytes()
    assert len(raw) >= PREFILL_BYTES and not any(raw[end:])  # zero-filled ahead
    s2 = RaftStorage(tmp_path)
    assert [e.index for e in s2.load().entries] == [1, 2, 3, 4, 5]
    assert s2.cut_bytes == 0  # zeros are the end of the log, not damage
    s2.save(None, ents(6, 9), None)  # written where the records ended, not after the zeros
    s2.close()
    assert [e.index for e in RaftStorage(tmp_path).load().entries] == list(range(1, 10))
    assert wal.stat().st_size == len(raw)  # no growth: the zeros took the records


def test_garbage_after_the_zeros_is_cut(tmp_path: Path) -> None:
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 1, 0), ents(1, 3), None)
    s.close()
    wal = next(tmp_path.glob("wal-*.log"))
    with open(wal, "ab") as f:
        f.write(b"junk")
    s2 = RaftStorage(tmp_path)
    assert [e.index for e in s2.load().entries] == [1, 2, 3]
    assert s2.cut_bytes > 0


@pytest.mark.parametrize("how", ["zeros", "short file"])
def test_torn_tail_is_cut(tmp_path: Path, how: str) -> None:
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 1, 0), ents(1, 5), None)
    s.save(None, ents(6, 6), None)
    end = s._size
    s.close()
    wal = next(tmp_path.glob("wal-*.log"))
    raw = bytearray(wal.read_bytes())
    if how == "zeros":  # a crash mid-record: its last bytes never left the zeros
        raw[end - 3 : end] = bytes(3)
        wal.write_bytes(bytes(raw))
    else:  # a file that ends mid-record (a WAL written without zeros ahead)
        wal.write_bytes(bytes(raw[: end - 3]))
    s2 = RaftStorage(tmp_path)
    st = s2.load()
    assert [e.index for e in st.entries] == [1, 2, 3, 4, 5]
    assert s2.cut_bytes > 0
    s2.save(None, ents(6, 7, term=2), None)  # appends after the cut work
    s2.close()
    assert [e.index for e in RaftStorage(tmp_path).load().entries] == list(range(1, 8))


def test_corrupt_record_is_cut(tmp_path: Path) -> None:
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 1, 0), ents(1, 3), None)
    size_after_3 = s._size
    s.save(None, ents(4, 6), None)
    s.close()
    wal = next(tmp_path.glob("wal-*.log"))
    raw = bytearray(wal.read_bytes())
    raw[size_after_3 + 14] ^= 0xFF  # flip a byte inside entry 4's record
    wal.write_bytes(bytes(raw))
    st = RaftStorage(tmp_path).load()
    assert [e.index for e in st.entries] == [1, 2, 3]


def test_snapshot_and_compaction(tmp_path: Path) -> None:
    s = RaftStorage(tmp_path, segment_bytes=200)  # tiny segments: many files
    s.load()
    for i in range(1, 51):
        s.save(HardState(1, 1, i - 1), ents(i, i), None)
    assert len(list(tmp_path.glob("wal-*.log"))) > 3
    s.save(None, [], Snapshot(40, 1, (1, 2, 3), b"state@40"))
    s.close()
    assert len(list(tmp_path.glob("snap-*.bin"))) == 1
    st = RaftStorage(tmp_path).load()
    assert st.snapshot is not None and st.snapshot.index == 40
    assert st.snapshot.data == b"state@40"
    assert [e.index for e in st.entries] == list(range(41, 51))
    assert st.hard_state.commit == 49


def test_installed_snapshot_replaces_a_stale_log(tmp_path: Path) -> None:
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 1, 0), ents(1, 20, term=1), None)
    s.save(HardState(3, 0, 15), [], Snapshot(15, 3, (1, 2, 3), b"leader state"), installed=True)
    s.close()
    st = RaftStorage(tmp_path).load()
    assert st.snapshot is not None and (st.snapshot.index, st.snapshot.term) == (15, 3)
    assert st.entries == []  # entries 16..20 of term 1 were not the leader's


def test_one_fsync_per_save(tmp_path: Path, monkeypatch) -> None:
    import os

    s = RaftStorage(tmp_path)
    s.load()
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    s.save(HardState(1, 1, 0), ents(1, 100), None)  # a Ready with many entries
    assert len(calls) == 1
    s.close()


def test_installed_snapshot_whose_marker_was_lost(tmp_path: Path) -> None:
    """Crash after the leader's snapshot file was renamed into place but before
    its WAL marker was written: the old log's suffix is another history."""
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 1, 0), ents(1, 20, term=1), None)
    s._write_snapshot(Snapshot(15, 3, (1, 2, 3), b"leader state"))  # ...then the crash
    s.close()
    st = RaftStorage(tmp_path).load()
    assert st.snapshot is not None and (st.snapshot.index, st.snapshot.term) == (15, 3)
    assert st.entries == []


def test_local_snapshot_file_without_marker_keeps_the_log(tmp_path: Path) -> None:
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 1, 12), ents(1, 20, term=1), None)
    s._write_snapshot(Snapshot(12, 1, (1, 2, 3), b"mine"))
    s.close()
    st = RaftStorage(tmp_path).load()
    assert [e.index for e in st.entries] == list(range(13, 21))


def test_damage_in_an_older_segment_is_an_error(tmp_path: Path) -> None:
    from metadata.raft.storage import StorageCorrupt

    s = RaftStorage(tmp_path, segment_bytes=200)
    s.load()
    for i in range(1, 30):
        s.save(HardState(1, 1, 0), ents(i, i), None)
    s.close()
    first = sorted(tmp_path.glob("wal-*.log"))[0]
    raw = bytearray(first.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    first.write_bytes(bytes(raw))
    with pytest.raises(StorageCorrupt):
        RaftStorage(tmp_path).load()


def test_restart_after_compaction_and_more_writes(tmp_path: Path) -> None:
    s = RaftStorage(tmp_path, segment_bytes=300)
    s.load()
    for i in range(1, 41):
        s.save(HardState(2, 1, i - 1), ents(i, i, term=2), None)
    s.save(None, [], Snapshot(30, 2, (1, 2, 3), b"s30"))
    for i in range(41, 61):
        s.save(HardState(2, 1, i - 1), ents(i, i, term=2), None)
    s.close()
    s2 = RaftStorage(tmp_path, segment_bytes=300)
    st = s2.load()
    assert st.snapshot is not None and st.snapshot.index == 30
    assert [e.index for e in st.entries] == list(range(31, 61))
    assert st.hard_state == HardState(2, 1, 59)
    s2.save(HardState(3, 0, 59), ents(58, 58, term=3), None)  # truncates 59, 60
    s2.close()
    st = RaftStorage(tmp_path).load()
    assert [(e.index, e.term) for e in st.entries][-3:] == [(56, 2), (57, 2), (58, 3)]


def test_core_runs_on_disk_storage_through_snapshots_and_restarts(tmp_path: Path) -> None:
    """The core driven with RaftStorage: compaction, a snapshot installed on a
    lagging follower, a full-cluster restart from disk."""
    from metadata.raft.core import RaftConfig
    from tests.raftsim.cluster import Cluster

    class DiskCluster(Cluster):
        def __init__(self) -> None:
            self.stores: dict[int, RaftStorage] = {}
            super().__init__((1, 2, 3), RaftConfig(peers=(1, 2, 3), snapshot_chunk_bytes=64))

        def add(self, node_id: int, cfg: RaftConfig | None = None):  # type: ignore[override]
            store = RaftStorage(tmp_path / f"n{node_id}", segment_bytes=2048)
            self.stores[node_id] = store
            self.disks[node_id] = store.load()
            return super().add(node_id, cfg)

        def crash(self, node_id: int) -> None:
            super().crash(node_id)
            self.stores.pop(node_id).close()

        def _persist(self, node_id: int, rd) -> None:  # type: ignore[override]
            self.stores[node_id].save(rd.hard_state, rd.entries, rd.snapshot, rd.install_snapshot)

    c = DiskCluster()
    ld = c.elect(1)
    for i in range(40):
        ld.propose(b"a%d" % i)
    c.deliver()
    c.tick(times=2)
    ld.compact(ld.applied, b"state@%d" % ld.applied)
    c.isolate(3)
    for i in range(40):
        ld.propose(b"b%d" % i)
    c.deliver()
    c.tick([1, 2], times=2)
    snap_index = ld.applied
    ld.compact(snap_index, b"state@%d" % snap_index)
    c.process(1)
    c.heal()
    c.tick(times=10)
    assert c.snapshots[3] == b"state@%d" % snap_index  # installed from the leader
    assert c.nodes[3].applied == ld.applied
    for i in (1, 2, 3):
        c.crash(i)
    for i in (1, 2, 3):
        n = c.restart(i)
        if i != 2:  # 1 compacted, 3 installed the leader's snapshot; 2 never compacted
            assert n.log.snapshot is not None and n.log.snapshot.index == snap_index
        assert n.log.last_index() >= snap_index
    for _ in range(100):
        c.tick()
        if c.leader() is not None:
            break
    new = c.leader()
    assert new is not None
    new.propose(b"after restart")
    c.deliver()
    c.tick(times=3)
    for i in (1, 2, 3):
        assert c.data_applied(i)[-1] == b"after restart"
        assert c.nodes[i].applied == new.applied


def test_a_nearly_full_disk_still_takes_records_and_loses_none() -> None:
    """The zeros ahead need 4 MiB; with less free, a save writes zeros for its own
    records only; when even those do not fit it fails with ENOSPC and every
    record saved before survives a restart."""
    import errno

    from tests.test_chunk_store import tiny_tmpfs

    with tiny_tmpfs("1m") as mnt:
        s = RaftStorage(mnt)
        s.load()
        saved = 0
        with pytest.raises(OSError) as err:
            for i in range(1, 1000):
                s.save(HardState(1, 1, i - 1), [Entry(i, 1, data=bytes(3000))], None)
                saved = i
        assert err.value.errno == errno.ENOSPC
        assert saved > 200  # ~1 MiB of 3 KB records: the 4 MiB of zeros was not required
        s.close()
        again = RaftStorage(mnt)
        try:
            assert [e.index for e in again.load().entries] == list(range(1, saved + 1))
        finally:
            again.close()
