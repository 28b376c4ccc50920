"""The Raft WAL: restart recovery, torn and corrupt tails, snapshots and compaction."""

from __future__ import annotations

from pathlib import Path

from metadata.raft.messages import Entry, HardState, Snapshot
from metadata.raft.storage import RaftStorage


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


def test_torn_tail_is_cut(tmp_path: Path) -> None:
    s = RaftStorage(tmp_path)
    s.load()
    s.save(HardState(1, 1, 0), ents(1, 5), None)
    s.save(None, ents(6, 6), None)
    s.close()
    wal = next(tmp_path.glob("wal-*.log"))
    raw = wal.read_bytes()
    wal.write_bytes(raw[:-3])  # a crash mid-record
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
    size_after_3 = next(tmp_path.glob("wal-*.log")).stat().st_size
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
