"""Seeding what a cluster made once: a repack, or the layers `get --layers` fetched.

`seed FOLDER` on a folder whose pin lists a repack or only some of a checkpoint's
files makes a torrent of exactly those files (plus the pin itself, untagged, at
.grokfetch/seeded-manifest.json), checking each file against the pin as it hashes
it; a second node fetches it with that .torrent (or its magnet) as its root of
trust, pins it and verifies it.  Real libtorrent sessions on 127.0.0.1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import flip_byte
from lt_helpers import SeederProc, run_get

from grokfetch.cli import cli
from grokfetch.errors import UsageError
from grokfetch.manifest import load_manifest
from grokfetch.metainfo import SEEDED_MANIFEST, load_torrent
from grokfetch.torrent import NetOptions, Seeder

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
