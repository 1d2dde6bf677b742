"""`grokfetch get` with the Hugging Face mirror as back-to-source, on 127.0.0.1.

The Hub is a loopback stand-in (tests/hub_standin.py) that speaks the Hub's
HTTP protocol: a resolve URL that redirects to a second "CDN" port with
Range support, the paginated tree API with each file's SHA-256, and the
published .torrent.  The swarm is either dead (no peer at all) or a real
libtorrent seeder in a subprocess.  Every byte the stand-in's CDN sends is
counted, so the tests can say what was fetched again and what was not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest
from hub_standin import HubStandin, repo_files
from lt_helpers import (
    GetProc,
    SeederProc,
    grokfetch_cmd,
    handmade_torrent,
    run_get,
    tree_bytes,
    wait_until,
)

from grokfetch.errors import PinRefused
from grokfetch.format import metainfo
from grokfetch.format.manifest import load_manifest
from grokfetch.format.metainfo import load_torrent, make_torrent
from grokfetch.hashing import StreamDigests
from grokfetch.integrity.verified_record import stat_key
from grokfetch.integrity.verify import pin
from grokfetch.trust import PinRoot, now

PIECE = 64 * 1024  # many pieces span two or more files of the mini checkpoint
REPO = "test/grok-mini"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, mini_ckpt: Path) -> Path:
    """The checkpoint root; its torrent (root folder ckpt-0/) lies beside ckpt-0/."""
    root = tmp_path_factory.mktemp("msrc") / "grok-mini"
    shutil.copytree(mini_ckpt, root)
    make_torrent(root, piece_size=PIECE)
    return root


@pytest.fixture(scope="module")
def info_hash(source: Path) -> str:
    return load_torrent(source / "ckpt-0.torrent")[1].info_hash


def published_torrent(source: Path) -> bytes:
    """The .torrent as the site serves it: web-seed URLs injected beside the info dict."""
    d = lt.bdecode((source / "ckpt-0.torrent").read_bytes())
    d[b"url-list"] = [b"http://127.0.0.1:9/injected-web-seed/"]
    return bytes(lt.bencode(d))


@pytest.fixture
def hub(source: Path, info_hash: str):
    files = repo_files(source)
    with HubStandin(REPO, files, page_size=40, torrent=published_torrent(source),
                    torrent_btih=info_hash) as h:
        yield h


def write_manifest(tmp: Path, source: Path, info_hash: str, hub: HubStandin,
                   torrent_url: bool = True, mirror: bool = True) -> Path:
    """The mini checkpoint's published manifest: sizes, a few packaged SHA-256, its sources."""
    d = json.loads((source / "grokfetch-manifest.json").read_text())
    d["pinned"] = False
    for i, f in enumerate(d["files"]):
        f["blake3"] = None
        f["chunks"] = None
        if i % 20 == 0:  # like grok-1.json: the SHA-256 of some files, published elsewhere
            f["sha256"] = hashlib.sha256((source / f["path"]).read_bytes()).hexdigest()
    d["sources"] = {
        "magnet": f"magnet:?xt=urn:btih:{info_hash}", "info_hash": info_hash,
        "trackers": [], "web_seeds": [],
        "mirrors": [{"kind": "huggingface", "repo": REPO, "revision": "main",
                     "folder": "ckpt-0"}] if mirror else [],
        "torrent_url": hub.torrent_url if torrent_url else None,
    }
    p = tmp / "published.json"
    p.write_text(json.dumps(d))
    return p


def packaged_paths(manifest: Path) -> list[str]:
    return [f.path for f in load_manifest(manifest).files if f.sha256]


def mirror_args(hub: HubStandin, manifest: Path, *extra: str) -> list[str]:
    return ["--manifest", str(manifest), "--mirror", hub.endpoint, *extra]


def ckpt(root: Path) -> dict[str, bytes]:
    return tree_bytes(root / "ckpt-0")


# --------------------------------------------------------------------------- no metadata


def test_dead_swarm_no_torrent_url_files_proven_by_sha256(tmp_path, source, info_hash, hub,
                                                         monkeypatch):
    man = write_manifest(tmp_path, source, info_hash, hub, torrent_url=False)
    dest = tmp_path / "dl"
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    g = run_get(f"magnet:?xt=urn:btih:{info_hash}", "--dest", str(dest),
                *mirror_args(hub, man, "--metadata-timeout", "1"), timeout=90)
    assert g.proc.returncode == 0, g.stderr
    res = g.result()
    assert res["source"] == "mirror" and res["complete"] is True
    assert ckpt(dest) == ckpt(source)
    assert res["downloaded"] == res["wanted"] == hub.total_served()
    assert any("no metadata after" in m for m in g.messages())
    # The token went to the Hub, never to the CDN.
    assert hub.auth_seen["hub"] > 0 and hub.auth_seen["cdn"] == 0
    # The tree API was read page by page (40 entries per page).
    assert sum(1 for r in hub.requests if "/tree/" in r[2]) >= 4
    pinned = load_manifest(dest / "grokfetch-manifest.json")
    assert pinned.pinned and [r.kind for r in pinned.pinned_by] == ["mirror-sha256"]
    assert pinned.pinned_by[0].id == hub.commit
    v = subprocess.run(grokfetch_cmd("verify", str(dest)), capture_output=True, text=True,
                       cwd=str(tmp_path))
    assert v.returncode == 0, v.stderr
    assert "proven by the mirror's SHA-256" in v.stdout + v.stderr
    assert REPO in v.stdout + v.stderr
    # The torrent, once at hand, upgrades the pin to the published root.
    up = subprocess.run(grokfetch_cmd("verify", str(dest), "--torrent",
                                      str(source / "ckpt-0.torrent"), "--pin"),
                        capture_output=True, text=True, cwd=str(tmp_path))
    assert up.returncode == 0, up.stderr
    assert f"root of trust: pin pass: torrent {info_hash[:12]}" in up.stdout + up.stderr
    assert [r.kind for r in load_manifest(dest / "grokfetch-manifest.json").pinned_by] == [
        "torrent"]


def test_mirror_faults_are_survived_and_a_corrupted_range_is_refetched(tmp_path, source,
                                                                       info_hash, hub):
    man = write_manifest(tmp_path, source, info_hash, hub)
    big = max(hub.files.values(), key=lambda f: f.size).path
    hub.faults.cdn_429 = 2
    hub.faults.cdn_503 = 2
    hub.faults.cut = 2
    hub.faults.hub_429 = 1
    hub.faults.corrupt[big] = 1
    dest = tmp_path / "dl"
    g = run_get("--source", "mirror", "--dest", str(dest), *mirror_args(hub, man), timeout=90)
    assert g.proc.returncode == 0, g.stderr
    res = g.result()
    assert ckpt(dest) == ckpt(source)
    assert res["refetched"] == [big]
    assert any(big in m and "hash mismatch" in m for m in g.messages())
    assert res["mirror"]["retries"] >= 6 and res["mirror"]["rejected"] > 0
    # Nothing but the corrupted file (and the halves of the cut bodies) came twice.
    assert hub.total_served() < res["wanted"] + 2 * hub.files[big].size + 400_000


def test_a_file_served_wrong_twice_is_refused_naming_it(tmp_path, source, info_hash, hub):
    man = write_manifest(tmp_path, source, info_hash, hub)
    big = max(hub.files.values(), key=lambda f: f.size).path
    hub.faults.corrupt[big] = 2
    dest = tmp_path / "dl"
    g = run_get("--source", "mirror", "--dest", str(dest), *mirror_args(hub, man), timeout=90)
    assert g.proc.returncode == 4, g.stderr
    assert big in g.stderr and "twice" in g.stderr and "Traceback" not in g.stderr
    assert not (dest / big).exists()  # never at its final name
    assert not (dest / "grokfetch-manifest.json").exists()


def test_the_mirror_hashes_must_agree_with_the_packaged_ones(tmp_path, source, info_hash, hub):
    man = write_manifest(tmp_path, source, info_hash, hub)
    victim = next(p for p in packaged_paths(man) if hub.files[p].lfs)
    hub.faults.wrong_sha256[victim] = "0" * 64
    g = run_get("--source", "mirror", "--dest", str(tmp_path / "dl"), *mirror_args(hub, man))
    assert g.proc.returncode == 4, g.stderr
    assert victim in g.stderr and "packaged" in g.stderr
    assert hub.total_served() == 0  # refused before a byte was fetched


def test_sigkill_mid_transfer_rerun_fetches_nothing_proven_again(tmp_path, source, info_hash,
                                                                 hub):
    man = write_manifest(tmp_path, source, info_hash, hub)
    dest = tmp_path / "dl"
    hub.faults.delay = 0.03  # a slow mirror, so the kill lands mid-transfer
    args = ["--source", "mirror", "--dest", str(dest), *mirror_args(hub, man)]
    with GetProc(*args) as g:
        total = sum(f.size for f in hub.files.values() if f.path.startswith("ckpt-0/"))
        wait_until(lambda: hub.total_served() > total // 3, 60, "a third served")
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait(10)
    journal = json.loads((dest / ".grokfetch" / "mirror-proven.json").read_text())
    assert journal, "nothing was proven before the kill"
    parts = {p.relative_to(dest / ".grokfetch" / "mirror").as_posix().removesuffix(".part"):
             p.stat().st_size for p in (dest / ".grokfetch" / "mirror").rglob("*.part")}
    hub.faults.delay = 0.0
    hub.reset_counts()
    g2 = run_get(*args, timeout=90)
    assert g2.proc.returncode == 0, g2.stderr
    assert ckpt(dest) == ckpt(source)
    for path in journal:  # proven in the first run: not one byte again
        assert hub.served.get(path, 0) == 0, path
    for path, have in parts.items():  # partial: continued from what was on disk
        if have:
            assert hub.served.get(path, 0) == hub.files[path].size - have, path
    assert g2.result()["kept"] >= sum(hub.files[p].size for p in journal)


# --------------------------------------------------------------------------- metadata by URL


def test_dead_swarm_torrent_url_pieces_from_the_mirror_then_a_second_node(tmp_path, source,
                                                                         info_hash, hub):
    man = write_manifest(tmp_path, source, info_hash, hub)
    some = sorted(p for p in hub.files if p.startswith("ckpt-0/"))[5]
    hub.faults.corrupt[some] = 1  # one range arrives corrupted: its piece must fail SHA-1
    first = tmp_path / "first"
    with GetProc(f"magnet:?xt=urn:btih:{info_hash}", "--dest", str(first), "--seed",
                 *mirror_args(hub, man, "--metadata-timeout", "60")) as g:
        g.wait_for(lambda e: e.get("event") == "message" and "seeding until" in e["message"],
                   90, "seeding")
        msgs = g.messages()
        assert any(m.startswith("metadata received from http") for m in msgs), msgs
        assert any("failed its SHA-1 check" in m for m in msgs), msgs
        port = next(int(m.rsplit(":", 1)[1]) for m in msgs if m.startswith("listening on"))
        saved = next(first.glob("*.torrent"))
        # The injected web seed was dropped: only the info dict was taken.
        assert load_torrent(saved)[1].web_seeds == ()
        assert ckpt(first) == ckpt(source)
        last = [e for e in g.progress() if e.get("sources")][-1]
        assert last["sources"]["mirror_proven"] >= last["wanted"]
        assert last["downloaded"] == 0  # not one byte from a peer
        # A second node, swarm only, gets it from the first: no mirror involved.
        hub.reset_counts()
        second = tmp_path / "second"
        g2 = run_get(f"magnet:?xt=urn:btih:{info_hash}", "--dest", str(second), "--source",
                     "swarm", "--peer", f"127.0.0.1:{port}", "--manifest", str(man), timeout=90)
        assert g2.proc.returncode == 0, g2.stderr
        assert ckpt(second) == ckpt(source)
        assert g2.result()["downloaded"] >= g2.result()["wanted"]
        assert hub.total_served() == 0
        g.signal(signal.SIGTERM)
        g.wait(30)


def test_a_torrent_url_with_another_info_hash_is_refused(tmp_path, source, info_hash, hub,
                                                         mini_ckpt):
    other = tmp_path / "other"
    shutil.copytree(mini_ckpt, other)
    hub.torrent = make_torrent(other, piece_size=2 * PIECE).read_bytes()  # not the magnet's
    man = write_manifest(tmp_path, source, info_hash, hub)
    g = run_get(f"magnet:?xt=urn:btih:{info_hash}", "--dest", str(tmp_path / "dl"),
                *mirror_args(hub, man), timeout=60)
    assert g.proc.returncode == 4, g.stderr
    assert "refused" in g.stderr and info_hash in g.stderr


def test_swarm_and_mirror_both_contribute(tmp_path, source, info_hash, hub):
    man = write_manifest(tmp_path, source, info_hash, hub, torrent_url=False)
    with SeederProc(source, "--max-upload-rate", "1M") as seeder:
        dest = tmp_path / "dl"
        g = run_get(seeder.bare_magnet, "--dest", str(dest), "--peer", seeder.peer,
                    *mirror_args(hub, man), timeout=90)
    assert g.proc.returncode == 0, g.stderr
    res = g.result()
    assert ckpt(dest) == ckpt(source)
    assert res["downloaded"] > 0  # from the swarm
    assert res["sources"]["mirror_proven"] > 0  # from the mirror, piece-verified
    assert res["downloaded"] + res["sources"]["mirror_proven"] >= res["wanted"]


def test_a_node_fed_by_the_seeders_magnet_never_contacts_the_mirror(tmp_path, source,
                                                                    info_hash, hub):
    """The origin is fetched once: the seeder's magnet (x.pe) makes a node swarm-only, even
    with the slow seeder that makes the run above go to the mirror."""
    man = write_manifest(tmp_path, source, info_hash, hub, torrent_url=False)
    hub.reset_counts()
    with SeederProc(source, "--max-upload-rate", "1M") as seeder:
        g = run_get(seeder.magnet, "--dest", str(tmp_path / "dl"), *mirror_args(hub, man),
                    timeout=90)
    assert g.proc.returncode == 0, g.stderr
    assert ckpt(tmp_path / "dl") == ckpt(source)
    assert any("fetching from the swarm only, never from the mirror" in m
               for m in g.messages())
    assert hub.requests == [] and hub.total_served() == 0  # not one request to the Hub


# --------------------------------------------------------------------------- saying why


def test_timeout_without_peers_says_why_with_the_manifest_total(tmp_path, source, info_hash,
                                                                 hub):
    man = write_manifest(tmp_path, source, info_hash, hub, torrent_url=False, mirror=False)
    g = run_get(f"magnet:?xt=urn:btih:{info_hash}", "--dest", str(tmp_path / "dl"),
                "--manifest", str(man), "--tracker", "http://127.0.0.1:9/announce",
                "--timeout", "3", timeout=60)
    assert g.proc.returncode == 4
    total = load_manifest(man).total_size
    assert f"0 of {total:,} bytes" in g.stderr
    assert "no peers found" in g.stderr
    assert "127.0.0.1:9" in g.stderr  # the unreachable tracker, named
    assert not any("127.0.0.1:9" in m and "waiting" not in m for m in g.messages())


def test_timeout_applies_after_the_fallback_to_whole_files(tmp_path, source, info_hash, hub):
    man = write_manifest(tmp_path, source, info_hash, hub, torrent_url=False)
    hub.faults.delay = 1.0  # 256 KiB a second per connection: minutes for the folder
    dest = tmp_path / "dl"
    args = [f"magnet:?xt=urn:btih:{info_hash}", "--dest", str(dest),
            *mirror_args(hub, man, "--metadata-timeout", "1")]
    t0 = time.monotonic()
    g = run_get(*args, "--timeout", "4", timeout=60)
    took = time.monotonic() - t0
    assert g.proc.returncode == 4, g.stderr
    assert any("no metadata after" in m for m in g.messages())  # it did fall back
    total = sum(f.size for f in hub.files.values() if f.path.startswith("ckpt-0/"))
    assert "not complete after 4 s" in g.stderr and f"of {total:,} bytes proven" in g.stderr
    assert "Traceback" not in g.stderr
    assert took < 30  # the workers stopped: not minutes
    assert not (dest / "grokfetch-manifest.json").exists()
    state = dest / ".grokfetch"
    on_disk = sum(p.stat().st_size for p in (state / "mirror").rglob("*.part"))
    journal = json.loads((state / "mirror-proven.json").read_text()) if (
        state / "mirror-proven.json").exists() else {}
    on_disk += sum(hub.files[rel].size for rel in journal)
    assert on_disk > 0
    # The rerun continues from what the stopped run left: nothing fetched twice.
    hub.faults.delay = 0.0
    hub.reset_counts()
    g2 = run_get(*args, timeout=90)
    assert g2.proc.returncode == 0, g2.stderr
    assert ckpt(dest) == ckpt(source)
    assert hub.total_served() == total - on_disk


def test_the_pin_from_the_stream_is_the_pin_a_full_read_makes(tmp_path, source, info_hash, hub,
                                                             mini_ckpt):
    # get computes the pin's BLAKE3 (whole file and 64 KiB chunks here) while it streams;
    # the source's own pin was made by reading every file.
    man = write_manifest(tmp_path, source, info_hash, hub, torrent_url=False)
    dest = tmp_path / "dl"
    g = run_get("--source", "mirror", "--dest", str(dest), *mirror_args(hub, man), timeout=90)
    assert g.proc.returncode == 0, g.stderr
    streamed = {e.path: e for e in load_manifest(dest / "grokfetch-manifest.json").files}
    read = {e.path: e for e in load_manifest(mini_ckpt / "grokfetch-manifest.json").files}
    assert streamed.keys() == read.keys()
    assert sum(len(e.chunks or []) > 1 for e in read.values()) > 5  # files of many chunks
    for rel, e in read.items():
        assert (streamed[rel].blake3, streamed[rel].chunks) == (e.blake3, e.chunks), rel


def test_streamed_digests_stand_in_for_a_read_only_while_the_file_is_unchanged(copy_ckpt):
    root = copy_ckpt()
    pinned = load_manifest(root / "grokfetch-manifest.json")
    chunk = pinned.chunk_size
    # What the mirror's listing gives: SHA-256 values, no BLAKE3.
    published = pinned.with_files([
        replace(e, blake3=None, chunks=None,
                sha256=hashlib.sha256((root / e.path).read_bytes()).hexdigest())
        for e in pinned.files], pinned=False)
    mroot = PinRoot("mirror-sha256", "0" * 40, "test/repo on http://127.0.0.1", now())

    def streamed(rel: str, data: bytes | None = None) -> tuple[Any, Any]:
        s = StreamDigests(len(data) if data else (root / rel).stat().st_size, chunk)
        s.update(data if data is not None else (root / rel).read_bytes())
        return stat_key(os.stat(root / rel)), s.finish()

    rels = [e.path for e in pinned.files]
    victim = rels[3]
    size = (root / victim).stat().st_size
    every = {rel: streamed(rel) for rel in rels}
    r = pin(root, manifest=published, manifest_root=mroot, streamed=every)
    assert r.report.bytes_hashed == 0  # not one file read again
    assert [(e.blake3, e.chunks) for e in r.manifest.files] == [
        (e.blake3, e.chunks) for e in pinned.files]
    # Digests of other bytes (what a writer that got it wrong would hand over) still face
    # the root: the SHA-256 they carry is not the published one.
    forged = dict(every, **{victim: streamed(victim, b"x" * size)})
    with pytest.raises(PinRefused, match=re.escape(victim)):
        pin(root, manifest=published, manifest_root=mroot, streamed=forged)
    # Once the file's stat moved on, the digests are not used: the file is read.
    st = os.stat(root / victim)
    os.utime(root / victim, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))
    r = pin(root, manifest=published, manifest_root=mroot, streamed=forged)
    assert r.report.bytes_hashed == size
    assert next(e for e in r.manifest.files if e.path == victim).blake3 == next(
        e for e in pinned.files if e.path == victim).blake3


# --------------------------------------------------------------------------- units


def test_raw_info_slice_is_byte_exact_even_in_non_canonical_order():
    # keys out of order inside info: re-encoding would sort them and change the hash
    info = b"d6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces20:" + b"a" * 20 + b"e"
    info_unsorted = b"d4:name1:x6:lengthi5e12:piece lengthi16384e6:pieces20:" + b"a" * 20 + b"e"
    for raw in (info, info_unsorted):
        data = b"d8:announce3:url4:info" + raw + b"8:url-listl3:abcee"
        assert metainfo.raw_info_slice(data) == raw
        assert metainfo.info_hash_of_info(raw) == hashlib.sha1(raw).hexdigest()
    assert (metainfo.info_hash_of_info(info_unsorted)
            != hashlib.sha1(lt.bencode(lt.bdecode(info_unsorted))).hexdigest())
    with pytest.raises(Exception, match="not a torrent"):
        metainfo.raw_info_slice(b"d4:info")


def test_the_tokenizer_beside_the_checkpoint_folder_is_fetched_the_rest_skipped(tmp_path,
                                                                               mini_ckpt):
    root = tmp_path / "grok-mini"
    shutil.copytree(mini_ckpt, root)
    big = os.urandom(3 * PIECE)  # begins in the checkpoint's last piece, ends in its own
    (root / "tokenizer.model").write_bytes(b"sentencepiece model bytes")
    (root / "notes.bin").write_bytes(big)
    (root / "README.md").write_text("hello")
    files = [(["ckpt-0", p.name], p.read_bytes()) for p in sorted((root / "ckpt-0").iterdir())]
    files += [(["tokenizer.model"], b"sentencepiece model bytes"), (["notes.bin"], big),
              (["README.md"], b"hello")]
    tpath = tmp_path / "grok-mini.torrent"
    tpath.write_bytes(handmade_torrent("grok-mini", files, piece_length=PIECE))
    with SeederProc(root, "--torrent", str(tpath)) as seeder:
        dest = tmp_path / "dl"
        g = run_get(str(tpath), "--dest", str(dest), "--peer", seeder.peer, "--source", "swarm",
                    "--manifest", str(root / "grokfetch-manifest.json"), timeout=90)
    assert g.proc.returncode == 0, g.stderr
    assert (dest / "grok-mini" / "tokenizer.model").read_bytes() == b"sentencepiece model bytes"
    # notes.bin shares a piece with the checkpoint: the pin pass needs its bytes
    assert (dest / "grok-mini" / "notes.bin").read_bytes() == big
    assert any("fetched too: grok-mini/notes.bin (it shares a torrent piece" in m
               for m in g.messages())
    assert not (dest / "grok-mini" / "README.md").exists()
    assert any("skipped: grok-mini/README.md" in m for m in g.messages())
    assert g.result()["complete"] is True and g.result()["manifest_path"]
    assert ckpt(dest / "grok-mini") == ckpt(root)


def test_files_already_in_place_with_the_published_hash_are_kept(tmp_path, source, info_hash,
                                                                 hub):
    # Say half the files came another way (an earlier `hf download` into DEST).
    man = write_manifest(tmp_path, source, info_hash, hub)
    dest = tmp_path / "dl"
    names = sorted(p for p in hub.files if p.startswith("ckpt-0/"))
    have, damaged = names[::2], names[1]
    for rel in have + [damaged]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, dest / rel)
    data = bytearray((dest / damaged).read_bytes())
    data[len(data) // 2] ^= 1
    (dest / damaged).write_bytes(bytes(data))
    g = run_get("--source", "mirror", "--dest", str(dest), *mirror_args(hub, man), timeout=90)
    assert g.proc.returncode == 0, g.stderr
    assert ckpt(dest) == ckpt(source)
    assert all(hub.served.get(rel, 0) == 0 for rel in have)
    assert hub.served[damaged] == hub.files[damaged].size  # not trusted: fetched again
    assert g.result()["kept"] == sum(hub.files[rel].size for rel in have)
