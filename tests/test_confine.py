"""The kernel keeps libtorrent's writes inside DEST (Landlock), whatever symlinks say.

These need Linux with Landlock (5.13+); where the kernel lacks it, get falls back on
its own checks (test_get_hostile.py) and these are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import libtorrent as lt
import pytest

from grokfetch.confine import abi_version, confined_call
from grokfetch.fetch.torrent import NetOptions, make_session
from grokfetch.format.metainfo import build_torrent

pytestmark = pytest.mark.skipif(abi_version() < 1, reason="no Landlock in this kernel")


def test_a_confined_thread_writes_only_inside_and_the_caller_stays_free(tmp_path: Path):
    inside, outside = tmp_path / "dest", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (inside / "ckpt-0").symlink_to(outside)  # swapped in by someone else

    def write_both() -> list[str]:
        got = []
        for target in (inside / "a", inside / "ckpt-0" / "b", outside / "c"):
            try:
                target.write_bytes(b"x")
                got.append(f"{target.name}: written")
            except PermissionError:
                got.append(f"{target.name}: refused")
        return got

    got, confined = confined_call(write_both, [inside])
    assert confined
    assert got == ["a: written", "b: refused", "c: refused"]
    assert os.listdir(outside) == []
    (outside / "d").write_bytes(b"x")  # this thread was never restricted


def _written(save_path: Path, writes_beneath: Path, torrent: bytes, piece: bytes) -> str:
    ses = make_session(NetOptions(listen="127.0.0.1:0", dht=False, utp=False),
                       writes_beneath=writes_beneath)
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(lt.bdecode(torrent))
    atp.save_path = str(save_path)
    h = ses.add_torrent(atp)
    target = save_path / "ckpt-0" / "tensor00000_000"
    deadline = time.monotonic() + 20
    added = False
    while time.monotonic() < deadline:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, lt.torrent_checked_alert):
                h.add_piece(0, piece, 0)  # written by libtorrent's disk threads, not this one
                added = True
            if isinstance(a, lt.file_error_alert):
                return f"refused: {a.error.message()}"
        if added and h.have_piece(0):
            # A piece counts once its hash passes; its write (or the refusal) may still be
            # queued, so "written" means the bytes are in the file.
            h.flush_cache()
            with contextlib.suppress(OSError):
                if target.read_bytes()[: len(piece)] == piece:
                    return "written"
    raise AssertionError("libtorrent neither wrote the piece nor failed")


def test_libtorrent_threads_started_in_a_confined_session_cannot_write_outside(tmp_path: Path):
    src = tmp_path / "src" / "ckpt-0"
    src.mkdir(parents=True)
    (src / "tensor00000_000").write_bytes(os.urandom(40_000))
    torrent = build_torrent(src.parent, piece_size=16 * 1024)
    piece = (src / "tensor00000_000").read_bytes()[: 16 * 1024]
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    assert _written(dest, dest, torrent, piece) == "written"
    assert (dest / "ckpt-0" / "tensor00000_000").exists()
    got = _written(outside, dest, torrent, piece)
    assert got.startswith("refused: "), got
    assert "ermission" in got
    assert list(outside.rglob("*")) in ([], [outside / "ckpt-0"])  # no byte landed
