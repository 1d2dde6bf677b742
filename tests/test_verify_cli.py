"""``grokfetch verify``: b3sum-style lines, --quiet, --json, --pin, and the exit codes.

Exit codes: 0 all good, 1 problems found, 2 could not run (bad arguments,
unreadable or unsafe manifest), 4 the torrent is unreadable or not the manifest's.
"""

from __future__ import annotations

import json

from click.testing import CliRunner
from helpers import flip_byte

from grokfetch.cli import cli
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest
from grokfetch.format.metainfo import build_torrent

BIG = "ckpt-0/tensor00000_000"


def run(*args: str):
    return CliRunner().invoke(cli, ["verify", *args])




def test_clean_checkpoint_prints_one_ok_line_per_file_and_exits_0(mini_ckpt):
    r = run(str(mini_ckpt))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 146
    assert lines[0] == f"{BIG}: OK (blake3)"
    assert f"root of trust: pinned manifest {mini_ckpt / MANIFEST_NAME}" in r.stderr
    assert "146 files: 146 OK" in r.stderr


def test_quiet_shows_only_problems_and_exits_1(copy_ckpt):
    root = copy_ckpt()
    flip_byte(root / BIG, 70_000)
    (root / "ckpt-0/tensor00009_000").unlink()
    r = run(str(root), "--quiet")
    assert r.exit_code == 1
    assert r.stdout.splitlines() == [
        f"{BIG}: FAILED (hash mismatch in bytes 65536-131071 (chunk 1 of 5))",
        "ckpt-0/tensor00009_000: MISSING (no such file)",
    ]
    assert "144 OK, 1 FAILED, 1 MISSING" in r.stderr
    assert "problems found" in r.stderr


def test_json_is_one_document_with_the_same_verdicts(copy_ckpt):
    root = copy_ckpt()
    flip_byte(root / BIG, 0)
    r = run(str(root), "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["trust"] == "pinned"
    assert doc["summary"]["FAILED"] == 1 and doc["summary"]["OK"] == 145
    bad = next(f for f in doc["files"] if f["status"] == "FAILED")
    assert bad["path"] == BIG and bad["bad_ranges"] == [[0, 65535]]


def test_unsafe_or_malformed_manifests_and_bad_arguments_exit_2(mini_ckpt, tmp_path):
    d = json.loads((mini_ckpt / MANIFEST_NAME).read_text())
    d["files"][3]["path"] = "ckpt-0/../../outside"
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(d))
    r = run(str(mini_ckpt), "--manifest", str(evil))
    assert r.exit_code == 2 and "Error:" in r.stderr and ".." in r.stderr

    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "grokfetch-manifest", "format_version": 1, "name": "x"}')
    r = run(str(mini_ckpt), "--manifest", str(broken))
    assert r.exit_code == 2 and "files: must be a list" in r.stderr

    assert run(str(tmp_path / "absent")).exit_code == 2
    assert run(str(mini_ckpt), "--manifest", "no-such-model").exit_code == 2
    assert run(str(mini_ckpt), "--trust-on-first-use").exit_code == 2


def test_no_root_of_trust_says_so_and_pin_needs_one(copy_ckpt):
    root = copy_ckpt()
    (root / MANIFEST_NAME).unlink()
    r = run(str(root), "--quiet")
    assert r.exit_code == 6  # nothing is wrong that can be seen, but nothing is proven
    assert r.stderr.splitlines()[-1].startswith("verify: not proven: no root of trust: 146 ")
    assert run(str(root), "--quiet", "--allow-unproven").exit_code == 0
    lines = r.stdout.splitlines()  # what is unverified: only OK lines are hidden
    assert len(lines) == 146 and all(": UNVERIFIED (structure OK: " in x for x in lines)
    assert "content not verified" in r.stderr and "--torrent FILE --pin" in r.stderr
    assert run(str(root), "--strict").exit_code == 1  # unverified counts with --strict
    r = run(str(root), "--pin")
    assert r.exit_code == 2 and "nothing vouches for its content" in r.stderr
    assert not (root / MANIFEST_NAME).exists()
    r = run(str(root), "--pin", "--trust-on-first-use", "--quiet")
    assert r.exit_code == 0 and load_manifest(root / MANIFEST_NAME).pinned  # asked for it
    r = run(str(root), "--quiet")
    assert r.exit_code == 6 and "pinned on first use" in r.stderr
    assert run(str(root), "--quiet", "--accept-first-use").exit_code == 0


def test_verify_with_a_torrent_then_pin(copy_ckpt, tmp_path):
    root = copy_ckpt()
    (root / MANIFEST_NAME).unlink()
    t = tmp_path / "mini.torrent"
    t.write_bytes(build_torrent(root, piece_size=16 * 1024))
    r = run(str(root), "--torrent", str(t), "--pin")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == f"{BIG}: OK (torrent)"
    assert f"pinned: {root / MANIFEST_NAME}" in r.stderr
    r = run(str(root), "--quiet")
    assert r.exit_code == 0 and "pinned manifest" in r.stderr


def test_a_file_that_is_not_a_torrent_exits_4_as_the_help_says(mini_ckpt, tmp_path):
    bad = tmp_path / "x.torrent"
    bad.write_bytes(b"not bencoded")
    r = run(str(mini_ckpt), "--torrent", str(bad))
    assert r.exit_code == 4
    assert r.stderr.startswith(f"Error: {bad}: not a torrent file")
    help_text = " ".join(run("--help").output.split())
    assert "4 the torrent is unreadable" in help_text
    # --pin on ckpt-0/ writes beside it, in the checkpoint root: the help says where
    assert "the folder holding it when FOLDER is ckpt-0/" in help_text


def test_layers_reports_only_those_layers_and_cannot_pin(copy_ckpt):
    root = copy_ckpt()
    for f in load_manifest(root / MANIFEST_NAME).files:
        if f.layer not in (None, 3):
            (root / f.path).unlink()
    assert run(str(root), "--quiet").exit_code == 1  # the whole list: 120 files MISSING
    r = run(str(root), "--layers", "3")
    assert r.exit_code == 0, r.output
    assert "14 files: 14 OK" in r.stderr
    assert "ckpt-0/tensor00062_000: OK (blake3)" in r.stdout  # layer 3's first file
    r = run(str(root), "--layers", "3", "--pin")
    assert r.exit_code == 2
    assert "Error: --pin pins every file of the checkpoint; drop --layers" in r.stderr
