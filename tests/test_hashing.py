"""The hashing engine: whole-file and chunk digests, read through small mmap windows.

The engine must give exactly what hashing the bytes in one piece gives, for
any file size, chunk size and window size; the tests shrink the window so
that chunks straddle windows and windows straddle chunks.
"""

from __future__ import annotations

import hashlib

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grokfetch import hashing
from grokfetch.hashing import (
    ChunkHasher,
    StreamDigests,
    blake3_and_sha256,
    blake3_file,
    chunk_digests,
    digest_file,
    file_digests,
    sha256_file,
    zero_digest,
)

EMPTY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
ABC_BLAKE3 = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.fixture
def tiny_windows(monkeypatch):
    """Map 4 KiB at a time and never take the small-file shortcut."""
    monkeypatch.setattr(hashing, "WINDOW", 4096)
    monkeypatch.setattr(hashing, "SMALL_FILE", 0)
    monkeypatch.setattr(hashing, "THREADED_FILE", 8192)  # exercise blake3's threads too


def reference(data: bytes, chunk_size: int) -> tuple[str, list[str]]:
    chunks = [blake3.blake3(data[i : i + chunk_size]).hexdigest()
              for i in range(0, len(data), chunk_size)]
    return blake3.blake3(data).hexdigest(), chunks


def test_known_answers(tmp_path):
    empty, abc = tmp_path / "empty", tmp_path / "abc"
    empty.write_bytes(b"")
    abc.write_bytes(b"abc")
    assert blake3_file(empty) == EMPTY_BLAKE3
    assert file_digests(empty, 1024) == hashing.FileDigests(EMPTY_BLAKE3, [], 0)
    assert blake3_file(abc) == ABC_BLAKE3
    assert sha256_file(abc) == ABC_SHA256
    assert file_digests(abc, 2).chunks == [blake3.blake3(b"ab").hexdigest(),
                                           blake3.blake3(b"c").hexdigest()]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 40_000), chunk_size=st.integers(1, 20_000))
def test_windowed_digests_equal_one_piece_hashing(tmp_path, tiny_windows, size, chunk_size):
    data = bytes((i * 7 + size) % 251 for i in range(size))
    p = tmp_path / "f"
    p.write_bytes(data)
    whole, chunks = reference(data, chunk_size)
    seen: list[int] = []
    d = file_digests(p, chunk_size, on_bytes=seen.append)
    assert (d.blake3, d.chunks, d.size) == (whole, chunks, size)
    assert sum(seen) == size
    assert blake3_file(p) == whole
    assert chunk_digests(p, chunk_size) == dict(enumerate(chunks))
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    assert blake3_and_sha256(p) == (whole, hashlib.sha256(data).hexdigest())


def test_chunk_digests_of_chosen_chunks_skip_those_past_the_end(tmp_path, tiny_windows):
    data = bytes(range(256)) * 100  # 25,600 bytes: chunks of 10,000 -> 3
    p = tmp_path / "f"
    p.write_bytes(data)
    _, chunks = reference(data, 10_000)
    assert chunk_digests(p, 10_000, [2, 0, 7]) == {0: chunks[0], 2: chunks[2]}


def test_chunk_hasher_accepts_blocks_of_any_length():
    data = bytes(range(200)) * 50
    h = ChunkHasher(999)
    for i in range(0, len(data), 333):  # blocks shorter and longer than nothing in particular
        h.update(data[i : i + 333])
    assert h.finish() == reference(data, 999)[1]
    with pytest.raises(ValueError):
        ChunkHasher(0)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 30_000), chunk_size=st.integers(1, 12_000),
       block=st.integers(1, 7_000))
def test_digests_fed_from_a_stream_equal_those_of_reading_the_file(tmp_path, size, chunk_size,
                                                                   block):
    # What a download computes as the bytes go by is what the pin pass computes by reading.
    data = bytes((i * 13 + size) % 253 for i in range(size))
    p = tmp_path / "f"
    p.write_bytes(data)
    s = StreamDigests(size, chunk_size)
    for i in range(0, size, block):
        s.update(memoryview(data)[i : i + block])
    assert s.finish() == digest_file(p, chunk_size, sha256=True)


def test_zero_digest_recognises_zero_filled_bytes(tmp_path):
    assert zero_digest(0) == EMPTY_BLAKE3
    assert zero_digest(100_000) == blake3.blake3(bytes(100_000)).hexdigest()


def test_a_large_file_uses_windows_and_threads_and_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "WINDOW", 1 << 20)
    data = bytes(range(256)) * (3 * 4096 + 17)  # ~3 MB: three windows and a bit
    p = tmp_path / "big"
    p.write_bytes(data)
    whole, chunks = reference(data, 1 << 20)
    assert file_digests(p, 1 << 20) == hashing.FileDigests(whole, chunks, len(data))
    assert blake3_file(p) == whole


def test_the_pin_pass_can_leave_chunk_hashes_out_and_still_feeds_every_byte(tmp_path, tiny_windows):
    # what the pin pass does for a file the torrent covers: one BLAKE3, the SHA-1 fed alike
    data = bytes(range(256)) * 100  # 25,600 bytes: more than one chunk of 10,000
    p = tmp_path / "f"
    p.write_bytes(data)
    fed = bytearray()
    d = digest_file(p, 10_000, chunked=False, feed=fed.extend, sha256=True)
    assert (d.blake3, d.chunks, d.size) == (reference(data, 10_000)[0], None, len(data))
    assert bytes(fed) == data and d.sha256 == hashlib.sha256(data).hexdigest()
    # a file of one chunk: its chunk hash is its whole-file hash, so it costs nothing
    assert digest_file(p, len(data), chunked=False).chunks == [reference(data, 10_000)[0]]
    (tmp_path / "empty").write_bytes(b"")
    assert digest_file(tmp_path / "empty", 10_000, chunked=False).chunks == []
