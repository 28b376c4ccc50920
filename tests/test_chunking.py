"""Content-defined chunking: stable cut points, streaming equals whole-buffer."""

from __future__ import annotations

import io
import os
import random

import pytest

from dfs.chunking import ChunkParams, chunk_id, split_buffer, split_stream

SMALL = ChunkParams(min_size=2048, avg_size=8192, max_size=32768)


@pytest.mark.parametrize("size", [0, 1, 2047, 2048, 32767, 32768, 32769, 1_000_003])
def test_stream_cuts_like_buffer(size: int) -> None:
    data = random.Random(size).randbytes(size)
    whole = [bytes(c) for c in split_buffer(data, SMALL)]
    streamed = list(split_stream(io.BytesIO(data), SMALL, block=70_001))
    assert streamed == whole
    assert b"".join(streamed) == data
    assert all(len(c) <= SMALL.max_size for c in streamed)


def test_insertion_near_start_keeps_most_chunks() -> None:
    data = os.urandom(4 << 20)
    edited = data[:1000] + os.urandom(100) + data[1000:]
    a = {chunk_id(c) for c in split_buffer(data, SMALL)}
    b = [chunk_id(c) for c in split_buffer(edited, SMALL)]
    shared = sum(1 for c in b if c in a) / len(b)
    assert shared > 0.95


def test_default_mean_chunk_is_about_a_mebibyte() -> None:
    data = os.urandom(64 << 20)
    sizes = [len(c) for c in split_buffer(data)]
    mean = sum(sizes) / len(sizes)
    assert 700_000 < mean < 1_500_000
    assert max(sizes) <= 4 << 20
