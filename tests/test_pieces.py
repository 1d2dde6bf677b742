"""Torrent piece verification (grokfetch.integrity.pieces) agrees with libtorrent's own recheck.

Pieces of a v1 torrent are cut from all files concatenated, so they span file
boundaries; the files here are sized so that most pieces do.  Every test
builds a small torrent with libtorrent itself, corrupts the data in a known
way, and compares our verdict per piece with what a real libtorrent session
says it has after a forced recheck (loopback only, DHT/LSD/UPnP/NAT-PMP off).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import libtorrent as lt
import pytest
from helpers import flip_byte

from grokfetch.errors import TorrentError, UsageError
from grokfetch.integrity.pieces import find_strip, load_piece_map, rel_path, verify_pieces

corrupt = functools.partial(flip_byte, mask=0xFF)

PIECE = 16 * 1024  # libtorrent's smallest piece size; files below straddle pieces
SIZES = {
    "ckpt-0/tensor00000_000": 40_000,
    "ckpt-0/tensor00001_000": 1_000,  # lies inside one piece, shared with both neighbours
    "ckpt-0/tensor00002_000": 0,
    "ckpt-0/tensor00003_000": 70_123,
    "ckpt-0/tensor00004_000": 5,
    "ckpt-0/tensor00005_000": 33_000,
}


def make_torrent(tmp_path: Path, hybrid: bool = False) -> tuple[Path, Path]:
    """Write files under tmp/dl/grok/ and a torrent of the folder 'grok'; return (dl, .torrent)."""
    dl = tmp_path / "dl"
    rng = __import__("random").Random(7)
    for rel, size in SIZES.items():
        p = dl / "grok" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
    # Listed in name order (not directory order) so piece numbers below are fixed.
    entries = [lt.create_file_entry(f"grok/{rel}", size) for rel, size in SIZES.items()]
    flags = 0 if hybrid else lt.create_torrent.v1_only
    ct = lt.create_torrent(entries, PIECE, flags)
    lt.set_piece_hashes(ct, str(dl))
    torrent = tmp_path / "grok.torrent"
    torrent.write_bytes(lt.bencode(ct.generate()))
    return dl, torrent


def libtorrent_have(torrent: Path, save_path: Path) -> list[bool]:
    """Which pieces a real libtorrent session says it has after force_recheck."""
    ses = lt.session(
        {
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "dht_bootstrap_nodes": "",
            "webtorrent_stun_server": "",
            "listen_interfaces": "127.0.0.1:0",
            "alert_mask": lt.alert_category.status | lt.alert_category.error,
        }
    )
    try:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(str(torrent))
        atp.save_path = str(save_path)
        h = ses.add_torrent(atp)
        deadline = time.monotonic() + 30

        def wait_checked() -> None:
            while True:
                assert time.monotonic() < deadline, "libtorrent did not finish checking"
                ses.wait_for_alert(500)
                if any(isinstance(a, lt.torrent_checked_alert) for a in ses.pop_alerts()):
                    return

        wait_checked()  # the check libtorrent runs when a torrent is added
        h.force_recheck()
        wait_checked()  # the explicit recheck we compare with
        return list(h.status(lt.status_flags_t.query_pieces).pieces)
    finally:
        ses.pause()




@pytest.mark.parametrize("hybrid", [False, True], ids=["v1", "hybrid-with-pad-files"])
def test_clean_data_every_piece_matches_like_libtorrent(tmp_path, hybrid):
    dl, torrent = make_torrent(tmp_path, hybrid)
    pm = load_piece_map(torrent)
    check = verify_pieces(pm, dl / "grok", jobs=2)
    assert check.ok and check.failed == () and check.unchecked == {}
    assert check.have() == libtorrent_have(torrent, dl) == [True] * pm.num_pieces


def test_corruption_across_file_boundaries_agrees_with_libtorrent_recheck(tmp_path):
    dl, torrent = make_torrent(tmp_path)
    root = dl / "grok"
    corrupt(root / "ckpt-0/tensor00001_000", 500)  # small file inside a shared piece
    corrupt(root / "ckpt-0/tensor00003_000", 70_000)  # near the end: piece spans into 00004
    with open(root / "ckpt-0/tensor00005_000", "r+b") as f:
        f.truncate(20_000)  # truncated: the last pieces are short
    (root / "ckpt-0/tensor00000_000").unlink()  # missing: its pieces cannot be read

    pm = load_piece_map(torrent)
    check = verify_pieces(pm, root, jobs=2)
    assert check.have() == libtorrent_have(torrent, dl)
    assert not check.ok

    by_name = {f.path.split("/")[-1]: f for f in pm.meta.files}
    # 40,000 bytes of file 0 are pieces 0-2; piece 2 also holds files 1 and 3's start
    assert set(check.unchecked) == {0, 1, 2}
    assert "ckpt-0/tensor00000_000 is missing" in check.unchecked[0]
    # the flipped byte of file 3 at 70,000 is stream byte 41,000 + 70,000 = 111,000: piece 6
    assert 6 in check.failed
    f3 = by_name["tensor00003_000"]
    assert check.bad_ranges(f3)[-1] == (6 * PIECE - pm.offset(f3), 70_122)


def test_single_flipped_byte_is_located_to_its_piece_and_file_range(tmp_path):
    dl, torrent = make_torrent(tmp_path)
    root = dl / "grok"
    corrupt(root / "ckpt-0/tensor00003_000", 30_000)
    pm = load_piece_map(torrent)
    f3 = next(f for f in pm.meta.files if f.path.endswith("tensor00003_000"))
    check = verify_pieces(pm, root, jobs=1)
    piece = (pm.offset(f3) + 30_000) // PIECE
    assert check.failed == (piece,)
    lo = piece * PIECE - pm.offset(f3)
    assert check.bad_ranges(f3) == [(lo, lo + PIECE - 1)]
    assert check.have() == libtorrent_have(torrent, dl)


def test_only_the_requested_pieces_are_read(tmp_path):
    dl, torrent = make_torrent(tmp_path)
    corrupt(dl / "grok/ckpt-0/tensor00005_000", 0)
    pm = load_piece_map(torrent)
    seen: list[int] = []
    check = verify_pieces(pm, dl / "grok", pieces=[0, 1], on_bytes=seen.append)
    assert check.ok and check.checked == (0, 1) and seen == [PIECE, PIECE]


def test_torrent_paths_are_found_from_the_download_folder_or_the_torrent_folder(tmp_path):
    dl, torrent = make_torrent(tmp_path)
    pm = load_piece_map(torrent)
    assert find_strip(pm.meta, dl) == 0  # dl holds grok/ckpt-0/...
    assert find_strip(pm.meta, dl / "grok") == 1  # the torrent's folder itself
    assert find_strip(pm.meta, tmp_path / "empty") == 1  # nothing there: assume its folder
    f = pm.meta.files[0]
    assert rel_path(f, 1).startswith("ckpt-0/")
    assert verify_pieces(pm, dl).ok


def test_bad_torrent_files_are_refused(tmp_path):
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"not bencoded at all")
    with pytest.raises(TorrentError):
        load_piece_map(bad)
    with pytest.raises(UsageError):
        load_piece_map(tmp_path / "absent.torrent")


def test_memory_stays_bounded_for_large_pieces(tmp_path, monkeypatch):
    # A piece is hashed in READ_BLOCK reads, never held whole: shrink the block
    # and check the hash is still right when a piece needs many reads.
    import grokfetch.integrity.pieces as pieces

    monkeypatch.setattr(pieces, "READ_BLOCK", 1000)
    dl, torrent = make_torrent(tmp_path)
    assert verify_pieces(load_piece_map(torrent), dl / "grok").ok
    assert os.path.getsize(dl / "grok/ckpt-0/tensor00003_000") > 1000
