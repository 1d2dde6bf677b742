"""Seeding what a cluster made once: a repack, or the layers `get --layers` fetched.

`seed FOLDER` on a folder whose pin lists a repack or only some of a checkpoint's
files makes a torrent of exactly those files (plus the pin itself, untagged, at
.grokfetch/seeded-manifest.json), checking each file against the pin as it hashes
it; a second node fetches it with that .torrent (or its magnet) as its root of
trust, pins it and verifies it.  Real libtorrent sessions on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import flip_byte
from lt_helpers import SeederProc, run_get

from grokfetch.cli import cli
from grokfetch.errors import UsageError
from grokfetch.fetch.torrent import NetOptions, Seeder
from grokfetch.format.manifest import load_manifest
from grokfetch.format.metainfo import SEEDED_MANIFEST, load_torrent

NET = NetOptions(listen="127.0.0.1:0", dht=False, utp=False)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def repack(src: Path, out: Path, layout: str) -> Path:
    r = run("repack", src, out, "--layout", layout, "-q")
    assert r.exit_code == 0, r.output
    return out


def listed_files(root: Path) -> dict[str, bytes]:
    m = load_manifest(root / "grokfetch-manifest.json")
    return {e.path: (root / e.path).read_bytes() for e in m.files}


@pytest.mark.parametrize("layout, by", [("per-tensor", "torrent"), ("sglang", "magnet")])
def test_a_repack_is_seeded_as_its_pinned_files_and_a_second_node_verifies_it(
        copy_ckpt, tmp_path: Path, layout: str, by: str):
    rp = repack(copy_ckpt(), tmp_path / "repacked", layout)
    (rp / "notes.txt").write_text("not in the pin: never served\n")
    with SeederProc(rp) as s:
        name = load_manifest(rp / "grokfetch-manifest.json").name
        assert s.torrent == rp / f"{name}.torrent"
        _, meta = load_torrent(s.torrent)
        served = [f.path.split("/", 1)[1] for f in meta.real_files()]
        assert served == sorted(served)  # one order on every node
        assert "notes.txt" not in served and "grokfetch-manifest.json" not in served
        assert SEEDED_MANIFEST in served
        dest = tmp_path / "node2"
        # the .torrent names no peer; the magnet names the seeder (x.pe)
        source = [str(s.torrent), "--peer", s.peer] if by == "torrent" else [s.magnet]
        g = run_get(*source, "--dest", str(dest), "--timeout", "45")
        assert g.proc.returncode == 0, g.stderr
    root = dest / name
    assert g.result()["root"] == str(root)
    assert listed_files(root) == listed_files(rp)
    assert not (root / "notes.txt").exists()
    pin = load_manifest(root / "grokfetch-manifest.json")
    assert [r.kind for r in pin.pinned_by] == ["torrent"]  # the torrent this node asked for
    assert pin.pinned_by[0].id == s.info_hash
    assert pin.repack == load_manifest(rp / "grokfetch-manifest.json").repack
    # verified three ways: its pin, the torrent alone, the repack's own manifest alone
    for extra in ([], ["--torrent", dest / f"{name}.torrent"],
                  ["--manifest", root / SEEDED_MANIFEST]):
        r = run("verify", root, "-q", *extra)
        assert r.exit_code == 0, r.output


def test_two_nodes_make_the_same_torrent_of_the_same_repack(copy_ckpt, tmp_path: Path):
    rp = repack(copy_ckpt(), tmp_path / "a" / "out", "per-tensor")
    other = tmp_path / "b" / "elsewhere"  # another node, another folder name
    shutil.copytree(rp, other)
    hashes = []
    for folder in (rp, other):
        with Seeder(folder, net=NET) as s:
            assert s.info is not None
            hashes.append(s.info.info_hash)
    assert hashes[0] == hashes[1]


def test_seed_refuses_a_repack_file_changed_since_its_pin(copy_ckpt, tmp_path: Path):
    rp = repack(copy_ckpt(), tmp_path / "repacked", "per-tensor")
    victim = next(iter(sorted(rp.glob("layer-03/*.safetensors"))))
    flip_byte(victim, victim.stat().st_size - 1)
    with pytest.raises(UsageError, match=f"{victim.name}: its bytes are not the ones"):
        Seeder(rp, net=NET).start()
    assert not list(rp.glob("*.torrent"))


def test_a_partial_get_is_pinned_and_its_layers_seeded_to_a_node_that_verifies_them(
        copy_ckpt, tmp_path: Path):
    ckpt = copy_ckpt()
    with SeederProc(ckpt) as origin:
        part = tmp_path / "part"
        g = run_get(origin.magnet, "--dest", str(part), "--manifest",
                    str(ckpt / "grokfetch-manifest.json"), "--layers", "2", "--timeout", "45")
        assert g.proc.returncode == 0, g.stderr
    pin = load_manifest(part / "grokfetch-manifest.json")  # a partial pin: layer 2 + emb + norm
    assert [r.kind for r in pin.pinned_by] == ["torrent"]
    assert {e.layer for e in pin.files} == {None, 2}
    with SeederProc(part) as s:
        assert s.info_hash != origin.info_hash  # a torrent of just these files
        node = tmp_path / "node2"
        g = run_get(s.magnet, "--dest", str(node), "--timeout", "45")
        assert g.proc.returncode == 0, g.stderr
    root = Path(g.result()["root"])
    assert {e.path for e in load_manifest(root / "grokfetch-manifest.json").files} == \
        {e.path for e in pin.files}
    for e in pin.files:
        assert (root / e.path).read_bytes() == (ckpt / e.path).read_bytes()
    r = run("verify", root, "--layers", "2", "-q")
    assert r.exit_code == 0, r.output
    r = run("verify", root, "--torrent", node / f"{s.torrent.stem}.torrent", "-q")
    assert r.exit_code == 0, r.output


def test_a_torrent_serving_files_the_partial_pin_does_not_list_is_refused(
        copy_ckpt, tmp_path: Path):
    ckpt = copy_ckpt()
    with SeederProc(ckpt) as origin:
        part = tmp_path / "part"
        g = run_get(origin.magnet, "--dest", str(part), "--manifest",
                    str(ckpt / "grokfetch-manifest.json"), "--layers", "0", "--timeout", "45")
        assert g.proc.returncode == 0, g.stderr
    with pytest.raises(UsageError, match="not seeding"):
        Seeder(part, torrent=ckpt / "ckpt-0.torrent", net=NET).start()


def test_pieces_shared_with_a_file_not_fetched_are_checked_whole(tmp_path: Path):
    """A partial pin checks a piece it shares with a file not fetched: that file's bytes
    of it come from libtorrent's part file (``outside``), the rest from disk, and the
    whole piece must match its SHA-1; a wrong byte on either side fails it."""
    from grokfetch.format.metainfo import ListedFile, build_listed_torrent
    from grokfetch.integrity.pieces import hash_with_pieces, load_piece_map

    root = tmp_path / "t"
    root.mkdir()
    sizes = {"a": 40_000, "b": 50_000, "c": 30_000}  # 16 KiB pieces: each end is shared
    blobs = {n: os.urandom(s) for n, s in sizes.items()}
    for n, b in blobs.items():
        (root / n).write_bytes(b)
    data = build_listed_torrent("t", [ListedFile(n, root / n) for n in sizes])
    (tmp_path / "t.torrent").write_bytes(data)
    pm = load_piece_map(tmp_path / "t.torrent")
    stream = b"".join(blobs.values())
    pl = pm.piece_length
    (root / "b").unlink()  # the selection is a and c; b was not fetched
    shared = [40_000 // pl, 90_000 // pl]
    outside = {p: stream[p * pl:(p + 1) * pl] for p in shared}
    want = {f.index: False for f in pm.meta.real_files() if f.path != "t/b"}

    _, check = hash_with_pieces(pm, tmp_path, strip=0, blake3_files=want, outside=outside)
    assert not check.failed
    assert set(check.unchecked) == set(range(shared[0] + 1, shared[1]))  # b's own pieces
    assert not set(check.unchecked) & set(shared)

    bad = dict(outside)
    bad[shared[1]] = bytes([outside[shared[1]][0] ^ 1]) + outside[shared[1]][1:]
    _, check = hash_with_pieces(pm, tmp_path, strip=0, blake3_files=want, outside=bad)
    assert check.failed == (shared[1],)
    flip_byte(root / "a", 39_999)  # a's last byte, in the piece shared with b
    _, check = hash_with_pieces(pm, tmp_path, strip=0, blake3_files=want, outside=outside)
    assert check.failed == (shared[0],)


def test_a_seeded_manifest_that_disagrees_with_its_torrent_is_refused(tmp_path: Path):
    """The seeded manifest is hostile like every byte: one that names a file its torrent
    does not carry stops the get (exit 4) naming it, before anything is pinned."""
    import json

    from grokfetch.format.metainfo import ListedFile, build_listed_torrent

    folder = tmp_path / "made"
    (folder / ".grokfetch").mkdir(parents=True)
    (folder / "a.bin").write_bytes(os.urandom(70_000))
    lie = {"format": "grokfetch-manifest", "format_version": 1, "name": "made",
           "files": [{"path": "a.bin", "size": 70_000}, {"path": "b.bin", "size": 5}]}
    (folder / SEEDED_MANIFEST).write_text(json.dumps(lie))
    data = build_listed_torrent("made", [ListedFile("a.bin", folder / "a.bin"),
                                         ListedFile(SEEDED_MANIFEST, folder / SEEDED_MANIFEST)])
    tpath = tmp_path / "made.torrent"
    tpath.write_bytes(data)
    with SeederProc(tmp_path, "--torrent", str(tpath)) as s:
        g = run_get(str(tpath), "--peer", s.peer, "--dest", str(tmp_path / "node2"),
                    "--timeout", "45")
    assert g.proc.returncode == 4, g.stderr
    assert "b.bin is not in the torrent" in g.stderr
    assert not (tmp_path / "node2" / "made" / "grokfetch-manifest.json").exists()
