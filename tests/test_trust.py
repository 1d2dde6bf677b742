"""Trust that a sender cannot replace (issue 10), staged the way a hostile sender would.

The sender controls everything in the folder it ships - files, manifests, tags,
torrents - but not this user's pin key.  Each case ends non-zero with one line
naming the file and the reason, and the honest version of the same folder passes.
The sender's own grokfetch runs with its own config folder (its own key).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import libtorrent as lt
import pytest
from click.testing import CliRunner
from helpers import flip_byte
from lt_helpers import LOOPBACK, GetProc, SeederProc, run_get

from grokfetch.cli import cli
from grokfetch.errors import UsageError
from grokfetch.fetch.torrent import NetOptions, Seeder
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest
from grokfetch.format.metainfo import build_torrent
from grokfetch.integrity.pieces import load_piece_map
from grokfetch.synth import synthesize

BIG = "ckpt-0/tensor00000_000"
PIECE = 16 * 1024
NET = NetOptions(listen="127.0.0.1:0", dht=False, utp=False)


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["verify", *args], env=env)


@pytest.fixture
def sender(tmp_path: Path) -> dict[str, str]:
    """The environment of the sender's machine: its own pin key."""
    return {"GROKFETCH_CONFIG_DIR": str(tmp_path / "sender-config")}


@pytest.fixture
def good(copy_ckpt, tmp_path: Path) -> tuple[Path, Path]:
    """An honest checkpoint (no manifest yet) and the torrent that vouches for it."""
    root = copy_ckpt("good")
    (root / MANIFEST_NAME).unlink()
    shutil.rmtree(root / ".grokfetch", ignore_errors=True)
    t = tmp_path / "GOOD.torrent"
    t.write_bytes(build_torrent(root, piece_size=PIECE))
    return root, t


def tampered_copy(good: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "COPY"
    shutil.copytree(good, copy)
    flip_byte(copy / BIG, 150_000)
    return copy


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# 1. ------------------------------------------------------------------------------------


def test_a_planted_manifest_never_outranks_the_torrent_you_pass(good, tmp_path, sender):
    root, t = good
    copy = tampered_copy(root, tmp_path)
    made = run(str(copy), "--pin", "--trust-on-first-use", "--quiet", env=sender)
    assert made.exit_code == 0 and '"pin_tag"' in (copy / MANIFEST_NAME).read_text()

    r = run(str(copy), "--torrent", str(t), "--pin")
    assert r.exit_code == 1
    assert f"{BIG}: FAILED (hash mismatch in bytes 147456-163839 (torrent piece" in r.stdout
    err = [x for x in r.stderr.splitlines() if x.startswith("Error: ")]
    assert len(err) == 1 and BIG in err[0] and "does not match the torrent: not pinned" in err[0]
    assert "not used: --torrent is the root of this run" in r.stderr
    # the planted manifest is not re-pinned as this user's
    assert load_manifest(copy / MANIFEST_NAME).pinned_by[0].kind == "first-use"
    r = run(str(copy))
    assert r.exit_code == 6
    assert "manifest of unknown origin: not a root of trust" in last_line(r.stderr)
    assert str(copy / MANIFEST_NAME) in last_line(r.stderr)

    honest = run(str(root), "--torrent", str(t), "--pin", "--quiet")
    assert honest.exit_code == 0, honest.output
    again = run(str(root), "--quiet")
    assert again.exit_code == 0
    assert "proven by torrent" in again.stderr


# 2. ------------------------------------------------------------------------------------


def test_a_planted_torrent_is_no_root_of_trust(good, tmp_path, monkeypatch):
    root, t = good
    copy = tampered_copy(root, tmp_path)
    (copy / "ckpt-0.torrent").write_bytes(build_torrent(copy, piece_size=PIECE))
    r = run(str(copy))
    assert r.exit_code == 6
    planted = load_piece_map(copy / "ckpt-0.torrent").meta.info_hash
    assert f"{copy / 'ckpt-0.torrent'}: torrent of unknown origin (info-hash {planted}" in r.stderr
    assert "UNVERIFIED" in r.stdout and ": OK" not in r.stdout
    assert run(str(copy), "--torrent", str(t)).exit_code == 1  # the real one finds the byte

    # honest: a torrent in the folder whose info-hash is a packaged model's published one
    shutil.copy(t, root / "ckpt-0.torrent")
    published = tmp_path / "manifests"
    published.mkdir()
    m = json.loads(Path("manifests/grok-1.json").read_text())
    m["name"] = "published"
    m["sources"]["info_hash"] = load_piece_map(t).meta.info_hash
    m["sources"]["magnet"] = None
    m["files"], m["config"] = [], None
    (published / "published.json").write_text(json.dumps(m))
    monkeypatch.setenv("GROKFETCH_MANIFESTS", str(published))
    r = run(str(root), "--quiet")
    assert r.exit_code == 0, r.output
    assert "the published published torrent" in r.stderr


# 3. ------------------------------------------------------------------------------------


def test_get_rerun_after_sigterm_and_a_flipped_byte_never_pins_the_bad_byte(
    tmp_path, mini_ckpt
):
    source = tmp_path / "source"
    shutil.copytree(mini_ckpt, source)
    dest = tmp_path / "dl"
    manifest = ["--manifest", str(source / MANIFEST_NAME)]
    args = ["--dest", str(dest), *manifest, "--timeout", "60"]
    with SeederProc(source, "--max-upload-rate", "1M") as slow:
        with GetProc(slow.magnet, *args) as g:
            g.wait_for(lambda e: e.get("event") == "progress" and e["wanted"] > 0
                       and e["wanted_done"] > e["wanted"] // 4, 30, "a quarter of the data")
            g.signal(15)
            assert g.wait(10) == 130, g.stderr
        torrent = next(dest.glob("*.torrent"))
    # flip a byte in a piece the resume data says is there
    resume = next((dest / ".grokfetch").glob("*.resume"))
    have = list(lt.read_resume_data(resume.read_bytes()).have_pieces)
    piece = next(i for i, h in enumerate(have) if h)
    pm = load_piece_map(torrent)
    f = pm.files_of(piece)[0]
    offset = max(piece * pm.piece_length - pm.offset(f), 0)
    victim = dest / f.path
    flip_byte(victim, offset)

    with SeederProc(source) as fast:
        again = run_get(fast.magnet, *args)
    assert again.proc.returncode == 0, again.stderr
    said = [m for m in again.messages() if "the pin pass found bad data" in m]
    assert len(said) == 1 and f.path.split("/", 1)[-1] in said[0]
    assert "does not match the torrent" in said[0]
    assert victim.read_bytes() == (source / f.path).read_bytes()  # fetched again
    pinned = load_manifest(dest / MANIFEST_NAME)
    want = load_manifest(source / MANIFEST_NAME)
    assert [e.blake3 for e in pinned.files] == [e.blake3 for e in want.files]
    assert pinned.pinned_by[0].kind == "torrent"
    assert run(str(dest), "--quiet").exit_code == 0


# 4. ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "fifo"])
def test_seed_refuses_a_pinned_folder_with_a_file_gone(copy_ckpt, how):
    ckpt = copy_ckpt()
    victim = ckpt / "ckpt-0" / "tensor00005_000"
    victim.unlink()
    if how == "fifo":
        os.mkfifo(victim)
    with pytest.raises(UsageError) as e:
        Seeder(ckpt, net=NET).start()
    why = "missing" if how == "deleted" else "not a regular file"
    assert f"ckpt-0/tensor00005_000: {why}" in str(e.value)
    assert not (ckpt / "ckpt-0.torrent").exists()  # never a 145-file torrent
    r = CliRunner().invoke(cli, ["seed", str(ckpt), *LOOPBACK])
    assert r.exit_code == 2
    assert len(r.stderr.splitlines()) == 1 and "tensor00005_000" in r.stderr


def test_seed_of_the_honest_pinned_folder_is_lazy(copy_ckpt):
    with Seeder(copy_ckpt(), net=NET) as s:
        assert s.info is not None and s.info.verified == "lazy"


def test_seed_refuses_a_torrent_that_serves_less_than_the_pin(copy_ckpt, tmp_path):
    ckpt = copy_ckpt()
    part = tmp_path / "part" / "ckpt-0"
    part.mkdir(parents=True)
    for p in sorted((ckpt / "ckpt-0").iterdir())[:3]:
        shutil.copy(p, part / p.name)
    t = tmp_path / "part.torrent"
    t.write_bytes(build_torrent(part.parent, piece_size=PIECE))
    with pytest.raises(UsageError, match="lacks 143 pinned file"):
        Seeder(ckpt, torrent=t, net=NET).start()


# 5. ------------------------------------------------------------------------------------


def test_verify_with_no_root_of_trust_is_not_proven(good):
    root, _ = good
    r = run(str(root), "--quiet")
    assert r.exit_code == 6
    assert last_line(r.stderr).startswith("verify: not proven: no root of trust: 146 file(s)")
    assert run(str(root), "--allow-unproven", "--quiet").exit_code == 0


def test_a_manifest_of_a_subset_proves_nothing_beyond_it(copy_ckpt, tmp_path, sender):
    root = copy_ckpt()
    m = json.loads((root / MANIFEST_NAME).read_text())
    m["files"] = m["files"][:1]
    sub = tmp_path / "one.json"
    sub.write_text(json.dumps(m))
    # planted by the sender: unknown origin
    (root / MANIFEST_NAME).write_text(json.dumps(m))
    r = run(str(root), "--quiet")
    assert r.exit_code == 6 and "manifest of unknown origin" in last_line(r.stderr)
    # named by the user: the files it lists are proven, the 145 others are not
    r = run(str(root), "--manifest", str(sub), "--quiet")
    assert r.exit_code == 6
    assert "UNVERIFIED" in r.stdout and "EXTRA" not in r.stdout
    assert "the root of trust does not list" in last_line(r.stderr)


def test_a_manifest_with_duplicate_keys_is_refused(copy_ckpt):
    root = copy_ckpt()
    text = (root / MANIFEST_NAME).read_text()
    (root / MANIFEST_NAME).write_text(text.rstrip().rstrip("}") + ', "files": []}')
    r = run(str(root))
    assert r.exit_code == 2
    want = f"Error: {root / MANIFEST_NAME}: duplicate key 'files' (ambiguous manifest)\n"
    assert r.stderr == want


def test_a_pin_you_wrote_is_read_as_written_and_an_edited_one_is_checked_again(copy_ckpt):
    # A pin whose tag checks out was validated before it was written: its entries are
    # taken as they are (the fast path of verify --changed-only).  One edit and the tag
    # fails: every entry is validated again, and an unsafe path stops the run.
    from grokfetch.format.manifest import load_manifest_file, parse_manifest_bytes

    root = copy_ckpt()
    data = (root / MANIFEST_NAME).read_bytes()
    lm = load_manifest_file(root / MANIFEST_NAME)
    assert lm.authentic and lm.manifest == parse_manifest_bytes(data, "pin")
    m = json.loads(data)
    m["files"][0]["path"] = "../outside"
    (root / MANIFEST_NAME).write_text(json.dumps(m, indent=1) + "\n")
    r = run(str(root))
    assert r.exit_code == 2 and "unsafe manifest path '../outside'" in r.stderr


@pytest.mark.parametrize("what", ["folder", "fifo"])
def test_a_manifest_that_is_not_a_regular_file_is_refused(copy_ckpt, what):
    root = copy_ckpt()
    (root / MANIFEST_NAME).unlink()
    if what == "folder":
        (root / MANIFEST_NAME).mkdir()
    else:
        os.mkfifo(root / MANIFEST_NAME)
    # a subprocess, so that a FIFO opened for reading by mistake shows as a timeout
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "grokfetch", "verify", str(root)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and time.monotonic() - t0 < 60
    kind = "a folder" if what == "folder" else "a FIFO"
    assert p.stderr == f"Error: {root / MANIFEST_NAME}: is {kind}, not a manifest file\n"
    p = subprocess.run([sys.executable, "-m", "grokfetch", "verify", str(root), "--manifest",
                        str(root / MANIFEST_NAME)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and f"is {kind}, not a manifest file" in p.stderr


# 6. ------------------------------------------------------------------------------------


def test_an_explicit_torrent_of_another_checkpoint_is_never_ignored(copy_ckpt, tmp_path):
    root = copy_ckpt()  # pinned (by synth, on this machine)
    other = tmp_path / "other"
    synthesize(other, "mini", seed=1, chunk_size=64 * 1024)
    ot = tmp_path / "OTHER.torrent"
    ot.write_bytes(build_torrent(other, piece_size=PIECE))
    r = run(str(root), "--torrent", str(ot), "--quiet")
    assert r.exit_code == 1
    assert "FAILED (hash mismatch" in r.stdout and "not used: --torrent" in r.stderr
    own = tmp_path / "OWN.torrent"
    own.write_bytes(build_torrent(root, piece_size=PIECE))
    r = run(str(root), "--torrent", str(own), "--quiet")
    assert r.exit_code == 0 and r.stdout == ""


# the pin's own record ------------------------------------------------------------------


def test_a_pin_proven_by_a_torrent_says_so_and_a_copied_pin_does_not_count(
    good, tmp_path, sender
):
    root, t = good
    assert run(str(root), "--torrent", str(t), "--pin", "--quiet").exit_code == 0
    doc = json.loads(run(str(root), "--json").stdout)
    ih = load_piece_map(t).meta.info_hash
    assert doc["proven"] is True and doc["roots"][0]["kind"] == "torrent"
    assert doc["roots"][0]["id"] == ih
    assert {f["vouched_by"] for f in doc["files"]} == {f"pin:torrent:{ih}"}
    # the same folder on the sender's machine: the tag does not check out there
    r = run(str(root), "--quiet", env=sender)
    assert r.exit_code == 6 and "manifest of unknown origin" in r.stderr


# repack -------------------------------------------------------------------------------


def test_repack_takes_source_hashes_only_from_a_proven_pin(copy_ckpt, tmp_path, sender):
    from grokfetch.repack.run import repack

    root = copy_ckpt()
    real = load_manifest(root / MANIFEST_NAME)
    # the sender's manifest lies about a file's BLAKE3 (and carries the sender's tag)
    m = json.loads((root / MANIFEST_NAME).read_text())
    m["files"][0]["blake3"] = "0" * 64
    (root / MANIFEST_NAME).write_text(json.dumps(m))
    out = repack(root, tmp_path / "st").manifest_path
    got = load_manifest(out)
    sources = {e.source["file"]: e.source["blake3"] for e in got.files if e.source}
    assert sources[BIG] == real.file(BIG).blake3  # hashed from the bytes, not the claim
    assert got.pinned_by[0].kind == "repack" and not got.pinned_by[0].proven
    r = run(str(tmp_path / "st"), "--quiet")
    assert r.exit_code == 6 and "a source nothing proved" in r.stderr

    honest = copy_ckpt("honest")  # pinned here (by synth): the repack is proven
    out = repack(honest, tmp_path / "st2").manifest_path
    assert load_manifest(out).pinned_by[0].proven
    assert run(str(tmp_path / "st2"), "--quiet").exit_code == 0


def test_a_planted_manifest_cannot_change_the_model_the_files_are_read_as(copy_ckpt):
    # verify proves bytes, not the config a manifest states beside them: a sender who
    # changes the RoPE base in the manifest (re-tagged with its own key or not) would
    # make smoke and repack compute another model over proven bytes.  Only this user's
    # pin, a packaged model's config or exactly what the files show is taken.
    root = copy_ckpt()
    assert CliRunner().invoke(cli, ["inspect", str(root)]).exit_code == 0  # this user's pin
    m = json.loads((root / MANIFEST_NAME).read_text())
    m.pop("pin_tag")
    (root / MANIFEST_NAME).write_text(json.dumps(m))  # unknown origin, but what the files show
    r = CliRunner().invoke(cli, ["inspect", str(root)])
    assert r.exit_code == 0, r.output
    m["config"]["rope_base"] = 500000.0
    (root / MANIFEST_NAME).write_text(json.dumps(m))
    for cmd in (["inspect", str(root)], ["smoke", str(root), "--layer", "0"],
                ["repack", str(root), str(root.parent / "st")]):
        r = CliRunner().invoke(cli, cmd)
        assert r.exit_code == 2, (cmd, r.output)
        assert r.stderr == (f"Error: {root / MANIFEST_NAME}: a manifest of unknown origin (not "
                            "this user's pin) states a model config the files do not show "
                            "(rope_base); pass --config to name the model\n")
    assert not (root.parent / "st").exists()
    cfg = root.parent / "cfg.json"
    cfg.write_text(json.dumps(m["config"]))  # the user's own choice is taken
    r = CliRunner().invoke(cli, ["inspect", str(root), "--config", str(cfg)])
    assert r.exit_code == 0, r.output


def test_a_planted_selection_config_of_a_partial_folder_is_refused(copy_ckpt):
    # get --layers keeps the model's config in DEST/.grokfetch/manifest.json, tagged with
    # this user's key; one that came along with a copied folder names no model
    from grokfetch.format.manifest import save_manifest

    root = copy_ckpt()
    m = load_manifest(root / MANIFEST_NAME)
    (root / MANIFEST_NAME).unlink()
    (root / ".grokfetch").mkdir(exist_ok=True)
    planted = root / ".grokfetch" / "manifest.json"
    save_manifest(m, planted)  # untagged: the sender's word
    r = CliRunner().invoke(cli, ["inspect", str(root)])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"Error: {planted}: a model config of unknown origin")


# the key ------------------------------------------------------------------------------


def test_the_pin_key_is_made_once_private_in_the_config_folder(tmp_path, monkeypatch, good):
    from grokfetch import trust

    root, t = good
    monkeypatch.delenv("GROKFETCH_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert trust.config_dir() == tmp_path / "xdg" / "grokfetch"
    assert run(str(root), "--torrent", str(t), "--pin", "--quiet").exit_code == 0
    key = tmp_path / "xdg" / "grokfetch" / "pin.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    first = key.read_bytes()
    assert run(str(root), "--quiet").exit_code == 0  # the same key authenticates it
    assert key.read_bytes() == first  # made once
    key.write_bytes(os.urandom(32))  # a new key: the old pin is no longer yours
    assert run(str(root), "--quiet").exit_code == 6
