"""Verification against a torrent's SHA-1 pieces: the published root of trust for Grok-1.

Each test makes a v1 torrent of a copy of the mini checkpoint with 16 KiB
pieces (so most pieces span two or more files) and takes the pinned manifest
away, so the torrent is the only thing that can vouch for the bytes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import blake3
import pytest
from helpers import by_path, flip_byte

from grokfetch.errors import TorrentError, UsageError
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest
from grokfetch.format.metainfo import build_torrent
from grokfetch.integrity.pieces import load_piece_map
from grokfetch.integrity.verify import FAILED, MISSING, OK, UNVERIFIED, pin, verify
from grokfetch.trust import remember_torrent

flip = functools.partial(flip_byte, mask=0x80)

PIECE = 16 * 1024
BIG = "ckpt-0/tensor00000_000"


def torrent_checkpoint(copy_ckpt, tmp_path: Path, keep_manifest: bool = False):
    root = copy_ckpt()
    t = tmp_path / "grok-mini.torrent"
    t.write_bytes(build_torrent(root, piece_size=PIECE))
    if not keep_manifest:
        (root / MANIFEST_NAME).rename(tmp_path / "pinned.json")
    return root, t






def test_a_clean_checkpoint_matches_every_torrent_piece(copy_ckpt, tmp_path):
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    r = verify(root, torrent=t)
    assert r.ok and r.content_proven and r.trust == "torrent"
    assert r.info_hash == load_piece_map(t).meta.info_hash
    assert r.info_hash in r.root_of_trust
    assert {f.vouched_by for f in r.files} == {f"torrent:{r.info_hash}"}
    assert by_path(r)[BIG].line() == f"{BIG}: OK (torrent)"


def test_a_flipped_byte_is_located_to_its_chunk_and_to_its_torrent_piece(copy_ckpt, tmp_path):
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    flip(root / BIG, 150_000)
    pm = load_piece_map(t)
    start = pm.offset(next(f for f in pm.meta.files if f.path.endswith(BIG)))
    piece = (start + 150_000) // PIECE
    lo = piece * PIECE - start

    by_torrent = by_path(verify(root, torrent=t))[BIG]
    assert by_torrent.status == FAILED
    assert by_torrent.bad_ranges == [(lo, lo + PIECE - 1)]
    assert lo <= 150_000 < lo + PIECE
    assert f"(torrent piece {piece})" in by_torrent.detail

    by_chunk = by_path(verify(root, manifest=tmp_path / "pinned.json"))[BIG]
    assert by_chunk.bad_ranges == [(131072, 196607)]


def test_a_torrent_saved_in_the_folder_is_found_without_the_option(copy_ckpt, tmp_path):
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    t.rename(root / t.name)
    (root / ".grokfetch").mkdir(exist_ok=True)  # what `get` leaves: resume data
    (root / ".grokfetch" / "x.resume").write_bytes(b"d4:infoe")
    # found in the folder, a torrent nobody published or asked for vouches for nothing
    r = verify(root)
    assert r.trust is None and r.ok and not r.proven
    assert any("torrent of unknown origin" in n for n in r.notes)
    # the one the user asked `get` for (get records it, authenticated, in its state folder)
    remember_torrent(root / ".grokfetch", load_piece_map(root / t.name).meta.info_hash, "test")
    r = verify(root)
    assert r.trust == "torrent" and r.proven and "asked `grokfetch get` for" in r.root_of_trust
    assert r.summary["EXTRA"] == 0  # neither the .torrent nor get's state is an extra file


def test_a_missing_file_leaves_its_neighbours_bytes_unchecked_not_failed(copy_ckpt, tmp_path):
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    (root / "ckpt-0/tensor00001_000").unlink()  # the 662-byte final norm, inside one piece
    r = verify(root, torrent=t)
    got = by_path(r)
    assert got["ckpt-0/tensor00001_000"].status == MISSING
    # tensor00000 ends and tensor00002 starts inside pieces shared with the missing file
    for neighbour in ("ckpt-0/tensor00000_000", "ckpt-0/tensor00002_000"):
        assert got[neighbour].status == UNVERIFIED, got[neighbour].line()
        assert "share torrent pieces" in got[neighbour].detail
    assert r.summary[FAILED] == 0 and not r.ok
    # the torrent was used: the advice is to complete the missing file, not to pass a torrent
    assert r.advice is not None and "--torrent FILE" not in r.advice
    assert "2 file(s) share torrent pieces with missing" in r.advice


def test_pin_after_a_torrent_verification_makes_later_checks_torrent_free(copy_ckpt, tmp_path):
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    assert verify(root, torrent=t).content_proven
    out = pin(root, torrent=t, chunk_size=64 * 1024).path
    m = load_manifest(out)
    assert [(r.kind, r.id) for r in m.pinned_by] == [("torrent", m.sources.info_hash)]
    assert m.pinned and m.sources.info_hash == load_piece_map(t).meta.info_hash
    assert m.file(BIG).param == "language_model/in_out_embed"  # from the layout
    assert [f.blake3 for f in m.files] == [
        f.blake3 for f in load_manifest(tmp_path / "pinned.json").files
    ]
    r = verify(root)
    assert r.trust == "pinned" and r.ok and r.summary[OK] == 146


def test_a_pin_the_torrent_proved_has_no_chunk_hashes_and_its_pieces_locate_damage(
    copy_ckpt, tmp_path
):
    # chunk hashes would cost the pin pass a second BLAKE3 of every byte; the torrent's
    # pieces locate damage instead (what `get` pins, with the torrent saved beside it)
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    m = load_manifest(pin(root, torrent=t, chunk_size=64 * 1024).path)
    data = (root / BIG).read_bytes()
    assert len(data) > 64 * 1024 and m.file(BIG).chunks is None
    assert m.file(BIG).blake3 == blake3.blake3(data).hexdigest()  # what b3sum prints
    small = next(f for f in m.files if f.size <= 64 * 1024)
    assert small.chunks == [small.blake3]  # one chunk: its hash is the file's
    t.rename(root / t.name)  # where `get` saves it
    flip(root / BIG, 150_000)
    pm = load_piece_map(root / t.name)
    start = pm.offset(next(f for f in pm.meta.files if f.path.endswith(BIG)))
    piece = (start + 150_000) // PIECE
    lo = piece * PIECE - start

    r = verify(root)
    got = by_path(r)[BIG]
    assert r.trust == "pinned" and got.status == FAILED and got.hashes == ()
    assert got.bad_ranges == [(lo, lo + PIECE - 1)]
    assert f"torrent piece {piece} of {root / t.name}" in got.detail
    assert r.summary[FAILED] == 1 and r.summary[OK] == 145


def test_damage_in_a_chunkless_pin_is_still_found_without_its_torrent(copy_ckpt, tmp_path):
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    pin(root, torrent=t, chunk_size=64 * 1024)
    # a torrent of other bytes (another piece size: another info-hash) locates nothing
    (root / "other.torrent").write_bytes(build_torrent(root, piece_size=4 * PIECE))
    flip(root / BIG, 150_000)
    got = by_path(verify(root))[BIG]
    assert got.status == FAILED
    assert got.bad_ranges == [(0, (root / BIG).stat().st_size - 1)]
    assert "pass the torrent that proved the pin with --torrent" in got.detail
    # ... and passing it names the piece
    assert "torrent piece" in by_path(verify(root, torrent=t))[BIG].detail


def test_a_pin_with_chunk_hashes_from_before_still_locates_damage_by_chunk(copy_ckpt, tmp_path):
    # pins written before (and pins that no torrent proved) carry chunk hashes
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    pinned = load_manifest(tmp_path / "pinned.json")
    assert pinned.file(BIG).chunks and len(pinned.file(BIG).chunks) > 1
    m = load_manifest(pin(root, manifest=tmp_path / "pinned.json").path)
    assert m.file(BIG).chunks == pinned.file(BIG).chunks  # no torrent here: chunks kept
    flip(root / BIG, 150_000)
    assert by_path(verify(root))[BIG].bad_ranges == [(131072, 196607)]


def test_a_torrent_for_other_data_cannot_vouch_for_a_manifest(copy_ckpt, tmp_path):
    root, t = torrent_checkpoint(copy_ckpt, tmp_path, keep_manifest=True)
    m = load_manifest(root / MANIFEST_NAME)
    other = m.with_files(m.files, sources=type(m.sources)(info_hash="0" * 40))
    with pytest.raises(TorrentError, match="info-hash"):
        verify(root, manifest=other, torrent=t)


def test_quick_samples_pieces(copy_ckpt, tmp_path):
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    r = verify(root, torrent=t, quick=True, seed=3)
    assert r.ok and not r.content_proven
    assert 0 < r.bytes_hashed < sum(f.size or 0 for f in r.files)


def test_with_a_manifest_the_torrent_vouches_for_the_files_it_has_no_hash_for(copy_ckpt, tmp_path):
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    pinned = load_manifest(tmp_path / "pinned.json")
    # like the grok-1 manifest: sizes for all, a hash for a few
    files = [f if f.path == BIG else type(f)(path=f.path, size=f.size) for f in pinned.files]
    r = verify(root, manifest=pinned.with_files(files, pinned=False), torrent=t)
    got = by_path(r)
    assert r.ok and r.content_proven and "torrent" in r.root_of_trust
    assert got[BIG].vouched_by.startswith("manifest:") and got[BIG].hashes == ("blake3",)
    assert got["ckpt-0/tensor00001_000"].line() == "ckpt-0/tensor00001_000: OK (torrent)"
    # a byte flipped in the last, shared piece of the hashed file: the manifest's hash
    # blames that file, so its neighbours' bytes in the piece are unchecked, not bad
    flip(root / BIG, 262_300)
    got = by_path(verify(root, manifest=pinned.with_files(files, pinned=False), torrent=t))
    assert got[BIG].status == FAILED
    assert got["ckpt-0/tensor00001_000"].status == UNVERIFIED
    assert "share torrent pieces" in got["ckpt-0/tensor00001_000"].detail


def test_layers_checks_what_get_layers_fetched_and_nothing_else(copy_ckpt, tmp_path):
    # `get --layers 0` leaves layer 0, the embedding and the final norm; the rest never
    # arrived.  Verifying the whole list would report every other file MISSING.
    root, t = torrent_checkpoint(copy_ckpt, tmp_path)
    man = load_manifest(tmp_path / "pinned.json")
    wanted = {f.path for f in man.files if f.layer in (None, 0)}
    for f in man.files:
        if f.path not in wanted:
            (root / f.path).unlink()
    whole = verify(root, torrent=t, manifest=man)
    assert whole.summary[MISSING] == len(man.files) - len(wanted) and not whole.ok

    r = verify(root, torrent=t, manifest=man, layers="0")
    assert {f.path for f in r.files} == wanted
    assert r.ok and r.summary[MISSING] == 0 and r.summary[FAILED] == 0

    # by the torrent alone: its pieces straddle the files that never arrived, and the
    # torrent does not say which layer a file holds, so the model's manifest is needed
    with pytest.raises(UsageError, match="--layers: cannot tell which layer"):
        verify(root, torrent=t, layers="0")
    with pytest.raises(UsageError, match="outside 0-11"):
        verify(root, torrent=t, manifest=man, layers="12")
