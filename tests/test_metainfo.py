"""Torrent metadata: making, loading, path safety, matching a manifest, choosing files.

No network here: torrents are made from the mini checkpoint or written byte
by byte (``handmade_torrent``) to say things libtorrent itself never would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lt_helpers import handmade_torrent

from grokfetch.errors import TorrentError, UnsafePathError, UsageError
from grokfetch.format.manifest import load_manifest
from grokfetch.format.metainfo import (
    TorrentFile,
    TorrentMeta,
    auto_piece_size,
    build_torrent,
    check_info_paths,
    load_torrent,
    load_torrent_bytes,
    make_torrent,
    manifest_paths_for_layers,
    match_manifest,
    parse_magnet,
    priorities,
    select_files,
    torrent_file_bytes,
)


@dataclass(frozen=True)
class Entry:
    path: str
    size: int


def meta_of(paths_sizes: list[tuple[str, int]], pad: set[int] = frozenset()) -> TorrentMeta:
    files = tuple(TorrentFile(i, p, s, i in pad) for i, (p, s) in enumerate(paths_sizes))
    return TorrentMeta(name=paths_sizes[0][0].split("/")[0], info_hash="0" * 40,
                       piece_length=16384, num_pieces=1,
                       total_size=sum(s for _, s in paths_sizes), files=files)


# --------------------------------------------------------------------------- make


def test_make_torrent_lists_every_tensor_under_the_checkpoint_folder(copy_ckpt):
    root = copy_ckpt()
    path = make_torrent(root, piece_size=16384, web_seeds=["http://127.0.0.1:1/"],
                        trackers=["http://127.0.0.1:2/announce"])
    assert path == root / "ckpt-0.torrent"
    _, meta = load_torrent(path)
    man = load_manifest(root / "grokfetch-manifest.json")
    assert meta.name == "ckpt-0"
    assert [(f.path, f.size) for f in meta.files] == [(e.path, e.size) for e in man.files]
    assert meta.piece_length == 16384
    assert meta.web_seeds == ("http://127.0.0.1:1/",)
    assert meta.trackers == ("http://127.0.0.1:2/announce",)


def test_make_torrent_is_deterministic_and_accepts_ckpt_dir(copy_ckpt):
    root = copy_ckpt()
    data = build_torrent(root, 16384)
    assert data == build_torrent(root / "ckpt-0", 16384)
    # no clock in it: two nodes (or two seconds) make the same bytes
    assert b"creation date" not in data


def test_make_torrent_refuses_a_folder_without_a_checkpoint(tmp_path: Path):
    with pytest.raises(Exception, match="tensor00000_000"):
        make_torrent(tmp_path)


@pytest.mark.parametrize("bad", [1000, 3 * 16384, 8192])
def test_piece_size_must_be_a_power_of_two_of_16k_or_more(copy_ckpt, bad: int):
    with pytest.raises(UsageError, match="power of two"):
        build_torrent(copy_ckpt(), bad)


@pytest.mark.parametrize("total,piece", [(0, 16384), (8 << 20, 16384), (1 << 30, 1 << 20),
                                         (318_239_886_140, 16 << 20)])
def test_auto_piece_size(total: int, piece: int):
    assert auto_piece_size(total) == piece


def test_saved_metadata_keeps_the_info_hash(copy_ckpt):
    root = copy_ckpt()
    ti, meta = load_torrent(make_torrent(root, piece_size=16384,
                                         web_seeds=["http://127.0.0.1:1/"]))
    again, meta2 = load_torrent_bytes(torrent_file_bytes(ti))
    assert meta2.info_hash == meta.info_hash
    assert meta2.web_seeds == meta.web_seeds


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("path", [["..", "x"], ["a", "..", "..", "x"], [".."], ["a", ""],
                                  ["a/../../x"], ["."]])
def test_file_paths_that_could_escape_are_refused(tmp_path: Path, path: list[str]):
    data = handmade_torrent("root", [(path, b"x" * 10)])
    with pytest.raises(UnsafePathError, match="unsafe file path"):
        load_torrent_bytes(data, "evil.torrent")


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\b"])
def test_torrent_names_that_could_escape_are_refused(name: str):
    with pytest.raises(UnsafePathError, match="unsafe torrent name"):
        check_info_paths({b"name": name.encode(), b"files": []})


def test_v2_file_tree_is_checked_too():
    info = {b"name": b"ok", b"file tree": {b"..": {b"x": {b"": {b"length": 1}}}}}
    with pytest.raises(UnsafePathError, match="'..'"):
        check_info_paths(info)


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4))
def test_accepted_paths_never_leave_the_folder(parts: list[str]):
    info = {b"name": b"root", b"files": [{b"length": 1, b"path": [p.encode() for p in parts]}]}
    try:
        check_info_paths(info)
    except UnsafePathError:
        return
    import posixpath

    joined = posixpath.normpath(posixpath.join("dest", "root", *parts))
    assert joined.startswith("dest/root/")


def test_not_a_torrent_is_a_torrent_error():
    with pytest.raises(TorrentError, match="not a torrent"):
        load_torrent_bytes(b"hello", "x.torrent")


# --------------------------------------------------------------------------- manifest


ENTRIES = [Entry("ckpt-0/tensor00000_000", 10), Entry("ckpt-0/tensor00001_000", 20)]


@pytest.mark.parametrize("prefix,root", [("", ""), ("grok-1/", "grok-1"),
                                         ("a/b/", "a/b")])
def test_manifest_matched_by_path_suffix_whatever_the_root_folder(prefix: str, root: str):
    # File order in the torrent is not tensor order; matching is by path.
    meta = meta_of([(f"{prefix}ckpt-0/tensor00001_000", 20),
                    (f"{prefix}ckpt-0/tensor00000_000", 10)])
    fm = match_manifest(meta, ENTRIES)
    assert fm.root == root
    assert fm.by_manifest["ckpt-0/tensor00000_000"].index == 1
    assert fm.by_manifest["ckpt-0/tensor00001_000"].index == 0


def test_manifest_matched_by_file_name_when_the_folder_is_renamed():
    meta = meta_of([("weights/tensor00000_000", 10), ("weights/tensor00001_000", 20)])
    fm = match_manifest(meta, ENTRIES)
    assert fm.by_manifest["ckpt-0/tensor00001_000"].path == "weights/tensor00001_000"


def test_pad_files_and_extras_are_not_matched():
    meta = meta_of([("r/ckpt-0/tensor00000_000", 10), ("r/.pad/5", 5),
                    ("r/ckpt-0/tensor00001_000", 20), ("r/README.md", 3)], pad={1})
    fm = match_manifest(meta, ENTRIES)
    assert [f.path for f in fm.extra] == ["r/README.md"]
    assert priorities(meta, select_files(meta, fm)) == [4, 0, 4, 0]


def test_extra_files_outside_the_checkpoint_folder_are_accepted():
    # Like the published torrent, which may hold more than the checkpoint folder.
    meta = meta_of([("r/ckpt-0/tensor00000_000", 10), ("r/ckpt-0/tensor00001_000", 20),
                    ("r/tokenizer.model", 7), ("r/README.md", 3),
                    ("r/old/tensor00002_000", 5)])
    fm = match_manifest(meta, ENTRIES)
    assert [f.path for f in fm.extra] == ["r/tokenizer.model", "r/README.md",
                                          "r/old/tensor00002_000"]
    assert [f.index for f in select_files(meta, fm)] == [0, 1]


@pytest.mark.parametrize("files,message", [
    ([("r/ckpt-0/tensor00000_000", 10)], "ckpt-0/tensor00001_000 is not in the torrent"),
    ([("r/ckpt-0/tensor00000_000", 10), ("r/ckpt-0/tensor00001_000", 21)],
     "ckpt-0/tensor00001_000 is 21 bytes in the torrent, 20 in the manifest"),
    ([("r/ckpt-0/tensor00000_000", 10), ("r/ckpt-0/tensor00001_000", 20),
      ("r/ckpt-0/tensor00002_000", 5)],
     "r/ckpt-0/tensor00002_000 is in the torrent but not in the manifest"),
])
def test_torrent_disagreeing_with_manifest_names_the_file(files, message: str):
    with pytest.raises(TorrentError, match="disagrees with the manifest") as e:
        match_manifest(meta_of(files), ENTRIES, "x.torrent")
    assert message in str(e.value)


def test_include_globs_match_manifest_path_torrent_path_or_name():
    meta = meta_of([("r/ckpt-0/tensor00000_000", 10), ("r/ckpt-0/tensor00001_000", 20)])
    fm = match_manifest(meta, ENTRIES)
    for pattern in ["ckpt-0/tensor00001_000", "r/ckpt-0/*1_000", "tensor00001*"]:
        assert [f.index for f in select_files(meta, fm, [pattern])] == [1]
    with pytest.raises(UsageError, match="matches no file"):
        select_files(meta, fm, ["nothing*"])


def test_layers_select_their_files_plus_embedding_and_final_norm(mini_ckpt: Path):
    man = load_manifest(mini_ckpt / "grokfetch-manifest.json")
    paths = manifest_paths_for_layers(man, "1-2")
    layers = {man.file(p).layer for p in paths}
    assert layers == {None, 1, 2}
    assert {man.file(p).param for p in paths if man.file(p).layer is None} == {
        "language_model/in_out_embed", "language_model/rms_norm"}


def test_layer_selection_maps_to_priorities_by_path(mini_ckpt: Path):
    man = load_manifest(mini_ckpt / "grokfetch-manifest.json")
    # A torrent listing the files in reverse order: index is not tensor number.
    reverse = meta_of([(f"x/{e.path}", e.size) for e in reversed(man.files)])
    fm = match_manifest(reverse, man.files)
    chosen = select_files(reverse, fm, layer_paths=manifest_paths_for_layers(man, "0"))
    prio = priorities(reverse, chosen)
    picked = {reverse.files[i].path.removeprefix("x/") for i, p in enumerate(prio) if p}
    assert picked == {e.path for e in man.files if e.layer in (None, 0)}


def test_parse_magnet_reads_peer_hints():
    m = parse_magnet("magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=ckpt-0&x.pe=127.0.0.1:6881"
                     "&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce")
    assert m.info_hash == "ab" * 20 and m.name == "ckpt-0"
    assert m.peers == (("127.0.0.1", 6881),)
    assert m.trackers == ("http://127.0.0.1:1/announce",)


def test_bad_magnet_is_a_usage_error():
    with pytest.raises(UsageError, match="not a valid magnet"):
        parse_magnet("magnet:?xt=urn:btih:zz")


def test_libtorrent_would_have_sanitised_what_we_refuse():
    # Why the raw info dict is checked first: libtorrent quietly rewrites '..'.
    data = handmade_torrent("root", [(["..", "x"], b"x" * 10)])
    fs = lt.torrent_info(lt.bdecode(data)).layout()
    assert ".." not in fs.file_path(0).split("/")


def test_metadata_from_peers_is_checked_from_its_raw_bytes():
    # A magnet's metadata reaches us as a torrent_info libtorrent already
    # sanitised; meta_from_info re-reads the raw info section and refuses it.
    from grokfetch.format.metainfo import meta_from_info

    ti = lt.torrent_info(lt.bdecode(handmade_torrent("root", [(["..", "x"], b"x" * 10)])))
    with pytest.raises(UnsafePathError, match="unsafe file path '../x'"):
        meta_from_info(ti)
