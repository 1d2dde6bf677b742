"""``verify --changed-only``: re-hash only what the filesystem says changed since a full proof.

The record (``.grokfetch/verified.json``) keeps each proven file's device,
inode, size, mtime and ctime; a run re-hashes every file whose stat differs
and reports the rest as UNCHANGED, which is never OK and never proves the run
unless the user accepts it.  Most tests set the racy window to zero, since
their files were written a moment ago; one test checks the window itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import by_path, flip_byte

from grokfetch.errors import UsageError
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest_file
from grokfetch.integrity import verified_record
from grokfetch.integrity.verify import FAILED, OK, UNCHANGED, pin, verify

BIG = "ckpt-0/tensor00000_000"  # 262,306 bytes
SMALL = "ckpt-0/tensor00001_000"


@pytest.fixture
def no_racy_window(monkeypatch):
    monkeypatch.setattr(verified_record, "RACY_NS", 0)


@pytest.fixture
def proven(copy_ckpt, no_racy_window):
    """A pinned copy, fully verified once by a --changed-only run (which records it)."""
    root = copy_ckpt()
    first = verify(root, changed_only=True)
    assert first.proven and first.summary[OK] == len(first.files) == 146
    assert verified_record.record_path(root).is_file()
    return root


def total(root) -> int:
    return sum(e.size for e in load_manifest_file(root / MANIFEST_NAME).manifest.files)


def test_an_unchanged_tree_is_not_re_read_and_says_so(proven):
    r = verify(proven, changed_only=True)
    assert r.bytes_hashed == 0 and r.summary[UNCHANGED] == 146
    assert r.ok and not r.proven  # metadata unchanged proves nothing about the bytes ...
    assert "--changed-only: 146 file(s) UNCHANGED, not re-read" in (r.unproven or "")
    line = by_path(r)[BIG].line()
    assert line.startswith(f"{BIG}: UNCHANGED since verified at 20") and line.endswith(
        "(not re-read)")
    assert verify(proven, changed_only=True, accept_unchanged=True).proven  # ... unless accepted
    plain = verify(proven)  # never the default: a plain verify reads every byte
    assert plain.proven and plain.summary[OK] == 146 and plain.bytes_hashed == total(proven)


def test_a_file_whose_mtime_changed_is_re_hashed(proven):
    st = os.stat(proven / BIG)
    os.utime(proven / BIG, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = verify(proven, changed_only=True)
    assert by_path(r)[BIG].status == OK and r.bytes_hashed == st.st_size
    assert r.summary[UNCHANGED] == 145


def test_a_file_whose_size_changed_is_re_hashed_and_fails(proven):
    with open(proven / SMALL, "ab") as f:
        f.write(b"\0")
    r = verify(proven, changed_only=True)
    assert by_path(r)[SMALL].status == FAILED and not r.ok


def test_bytes_changed_with_the_mtime_put_back_are_caught_by_the_ctime(proven):
    st = os.stat(proven / BIG)
    flip_byte(proven / BIG, 1000)
    os.utime(proven / BIG, ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime moves all the same
    assert os.stat(proven / BIG).st_mtime_ns == st.st_mtime_ns
    r = verify(proven, changed_only=True)
    assert by_path(r)[BIG].status == FAILED and "chunk 0" in by_path(r)[BIG].detail


def test_a_file_replaced_by_another_inode_with_the_same_mtime_is_re_hashed(proven):
    p = proven / BIG
    st = os.stat(p)
    data = bytearray(p.read_bytes())
    data[70_000] ^= 1
    other = p.with_name("replacement")
    other.write_bytes(bytes(data))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, p)
    now = os.stat(p)
    assert (now.st_mtime_ns, now.st_size) == (st.st_mtime_ns, st.st_size)
    assert now.st_ino != st.st_ino
    bad = by_path(verify(proven, changed_only=True))[BIG]
    assert bad.status == FAILED and "chunk 1" in bad.detail


def test_a_failed_file_never_becomes_ok_or_unchanged(proven):
    flip_byte(proven / BIG, 5)
    for _ in range(2):  # the failure drops its record: every later run reads it again
        r = verify(proven, changed_only=True, accept_unchanged=True)
        assert by_path(r)[BIG].status == FAILED and not r.ok and not r.proven
        assert r.bytes_hashed == os.stat(proven / BIG).st_size
    record = json.loads(verified_record.record_path(proven).read_text())
    assert BIG not in record["files"] and len(record["files"]) == 145


def test_a_record_made_with_another_users_key_vouches_for_nothing(proven, tmp_path,
                                                                  monkeypatch):
    # Forge the best record there could be: this pin's bytes, every file's current stat,
    # tagged with a key that is not this user's (another user's, or an attacker's).
    pin_sha = load_manifest_file(proven / MANIFEST_NAME).sha256
    files = {e.path: verified_record.Verified(
        verified_record.stat_key(os.stat(proven / e.path)), "2026-01-01T00:00:00Z")
        for e in load_manifest_file(proven / MANIFEST_NAME).manifest.files}
    mine = os.environ["GROKFETCH_CONFIG_DIR"]
    monkeypatch.setenv("GROKFETCH_CONFIG_DIR", str(tmp_path / "someone-else"))
    verified_record.save(proven, pin_sha, files)
    monkeypatch.setenv("GROKFETCH_CONFIG_DIR", mine)
    assert verified_record.load(proven, pin_sha) == {}
    r = verify(proven, changed_only=True)
    assert r.summary[UNCHANGED] == 0 and r.bytes_hashed == total(proven) and r.proven


def test_a_record_edited_by_hand_or_of_another_pin_is_ignored(proven, no_racy_window):
    p = verified_record.record_path(proven)
    doc = json.loads(p.read_text())
    doc["files"][BIG][2] += 1  # any field: the tag no longer holds
    p.write_text(json.dumps(doc))
    assert verify(proven, changed_only=True).bytes_hashed == total(proven)
    pin(proven, first_use=True)  # a new pin: the record made for the old one is void
    r = verify(proven, changed_only=True, accept_first_use=True)
    assert r.summary[UNCHANGED] == 146  # ... and the pin pass recorded the new one


def test_a_record_is_checked_as_written_before_it_is_read(proven):
    # The tag is checked on the record's bytes before they are parsed: the same document
    # spelled otherwise (spaces after the separators) vouches for nothing.
    p = verified_record.record_path(proven)
    doc = json.loads(p.read_text())
    p.write_text(json.dumps(doc) + "\n")
    assert verify(proven, changed_only=True).bytes_hashed == total(proven)
    assert verify(proven, changed_only=True).summary[UNCHANGED] == 146  # recorded again


def test_a_file_changed_just_before_it_was_looked_at_is_not_recorded(copy_ckpt):
    root = copy_ckpt()  # written a moment ago: a coarse clock could hide a second write
    verify(root, changed_only=True)
    r = verify(root, changed_only=True)
    assert r.summary[UNCHANGED] == 0 and r.bytes_hashed == total(root)
    time.sleep(verified_record.RACY_NS / 1e9 + 0.1)
    verify(root, changed_only=True)
    assert verify(root, changed_only=True).summary[UNCHANGED] == 146


def test_changed_only_needs_the_pinned_manifest_as_the_root(copy_ckpt):
    root = copy_ckpt()
    with pytest.raises(UsageError, match="checks against the pinned manifest only"):
        verify(root, changed_only=True, manifest=root / MANIFEST_NAME)
    with pytest.raises(UsageError, match="drop --quick"):
        verify(root, changed_only=True, quick=True)


def test_the_cli_exits_6_for_unchanged_files_unless_accepted(proven):
    cmd = [sys.executable, "-m", "grokfetch", "verify", str(proven), "--changed-only"]
    env = {**os.environ}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 6, r.stderr
    assert f"{BIG}: UNCHANGED since verified at" in r.stdout
    assert "146 UNCHANGED" in r.stderr and "not proven: --changed-only" in r.stderr
    ok = subprocess.run([*cmd, "--accept-unchanged"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    alone = subprocess.run(cmd[:-1] + ["--accept-unchanged"], capture_output=True, text=True,
                           timeout=120)
    assert alone.returncode == 2 and "only makes sense with --changed-only" in alone.stderr
