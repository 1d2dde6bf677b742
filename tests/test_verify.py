"""grokfetch.integrity.verify on synthesized checkpoints: every kind of damage, found and located.

The ``mini_ckpt`` fixture is a 146-file checkpoint in the real format with a
pinned manifest whose chunk size is 64 KiB, so its larger files have several
chunks and a flipped byte can be located to one of them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
from helpers import by_path, flip_byte

from grokfetch import fsutil, hashing
from grokfetch.errors import ManifestError, PinRefused, UsageError
from grokfetch.format.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    load_manifest,
    save_manifest,
)
from grokfetch.integrity.verify import (
    EXTRA,
    FAILED,
    MISSING,
    OK,
    UNREADABLE,
    UNVERIFIED,
    pin,
    verify,
)

BIG = "ckpt-0/tensor00000_000"  # the embedding, 262,306 bytes: chunks 0-4 of 64 KiB
CHUNK = 64 * 1024






def test_a_clean_checkpoint_passes_against_its_pinned_manifest(mini_ckpt):
    r = verify(mini_ckpt)
    assert r.ok and r.content_proven
    assert r.trust == "pinned" and MANIFEST_NAME in r.root_of_trust
    assert r.summary[OK] == 146 == len(r.files)
    assert {f.vouched_by for f in r.files} == {"pin:synth"}  # the pin names what proved it
    assert by_path(r)[BIG].line() == f"{BIG}: OK (blake3)"
    assert r.bytes_hashed == load_manifest(mini_ckpt / MANIFEST_NAME).total_size


def test_the_folder_can_be_named_by_its_ckpt_0_subfolder(mini_ckpt):
    r = verify(mini_ckpt / "ckpt-0")
    assert r.ok and r.root == mini_ckpt


def test_a_symlink_to_ckpt_0_finds_the_pinned_manifest_beside_the_real_folder(
        mini_ckpt, tmp_path):
    link = tmp_path / "grok"  # e.g. ln -s /data/grok-1/ckpt-0 ~/models/grok
    link.symlink_to(mini_ckpt / "ckpt-0")
    r = verify(link)
    assert r.trust == "pinned" and r.ok and r.content_proven
    assert r.root == (mini_ckpt / "ckpt-0").resolve().parent


def test_one_flipped_byte_is_located_to_its_chunk(copy_ckpt):
    root = copy_ckpt()
    flip_byte(root / BIG, 150_000)  # chunk 2 = bytes 131072-196607
    r = verify(root)
    assert not r.ok
    bad = by_path(r)[BIG]
    assert bad.status == FAILED
    assert bad.bad_ranges == [(131072, 196607)]
    assert bad.line() == f"{BIG}: FAILED (hash mismatch in bytes 131072-196607 (chunk 2 of 5))"
    assert r.summary == {**r.summary, OK: 145, FAILED: 1}


def test_truncated_missing_extra_and_empty_files_are_each_reported(copy_ckpt):
    root = copy_ckpt()
    os.truncate(root / "ckpt-0/tensor00003_000", 1000)
    (root / "ckpt-0/tensor00004_000").unlink()
    (root / "ckpt-0/tensor00005_000").write_bytes(b"")
    (root / "ckpt-0/notes.txt").write_text("not part of the checkpoint")
    r = verify(root)
    got = by_path(r)
    assert got["ckpt-0/tensor00003_000"].status == FAILED
    assert got["ckpt-0/tensor00003_000"].detail == "truncated: 1000 of 196919 bytes"
    assert got["ckpt-0/tensor00003_000"].bad_ranges == [(1000, 196918)]
    assert got["ckpt-0/tensor00004_000"].line() == "ckpt-0/tensor00004_000: MISSING (no such file)"
    assert got["ckpt-0/tensor00005_000"].status == FAILED
    assert got["ckpt-0/tensor00005_000"].detail.startswith("empty file, expected ")
    assert got["ckpt-0/notes.txt"].status == EXTRA
    assert r.summary[MISSING] == 1 and r.summary[EXTRA] == 1 and r.summary[FAILED] == 2
    assert not r.ok


def test_extra_files_are_only_a_problem_with_strict(copy_ckpt):
    root = copy_ckpt()
    (root / "README.md").write_text("hello")
    assert verify(root).ok
    strict = verify(root, strict=True)
    assert not strict.ok and by_path(strict)["README.md"].status == EXTRA


def test_a_folder_where_a_file_should_be_is_unreadable(copy_ckpt):
    root = copy_ckpt()
    target = root / "ckpt-0/tensor00006_000"
    target.unlink()
    target.mkdir()
    r = verify(root)
    assert by_path(r)["ckpt-0/tensor00006_000"].status == UNREADABLE
    assert "folder" in by_path(r)["ckpt-0/tensor00006_000"].detail
    assert not r.ok


def test_a_fifo_named_like_a_tensor_file_is_unreadable_not_a_hang(copy_ckpt):
    # Without a manifest the layout is inferred from a few headers, file 5 among them;
    # opening a FIFO for reading blocks until a writer comes, which would be forever.
    import threading

    root = copy_ckpt()
    (root / MANIFEST_NAME).unlink()
    fifo = root / "ckpt-0/tensor00005_000"
    fifo.unlink()
    os.mkfifo(fifo)
    got: list = []
    t = threading.Thread(target=lambda: got.append(verify(root)), daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # release the blocked reader so the test process can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("verify blocked opening a FIFO")
    r = got[0]
    assert by_path(r)["ckpt-0/tensor00005_000"].status == UNREADABLE
    assert by_path(r)["ckpt-0/tensor00005_000"].detail == "not a regular file"
    assert not r.ok


def test_an_io_error_while_reading_is_reported_as_unreadable(copy_ckpt, monkeypatch):
    # Tests run as root, so chmod 000 cannot make a file unreadable; instead the
    # one seam every read goes through (hashing._blocks) fails for one file.
    root = copy_ckpt()
    real_blocks = hashing._blocks

    def failing(fd, start, end):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("tensor00000_000"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_blocks(fd, start, end)

    monkeypatch.setattr(hashing, "_blocks", failing)
    r = verify(root)
    bad = by_path(r)[BIG]
    assert bad.line() == f"{BIG}: UNREADABLE (Input/output error)"
    assert r.summary[UNREADABLE] == 1 and r.summary[OK] == 145


def test_a_file_without_read_permission_is_unreadable(copy_ckpt):
    root = copy_ckpt()
    (root / BIG).chmod(0)
    cmd = [sys.executable, "-m", "grokfetch", "verify", str(root), "--json"]
    if os.geteuid() == 0:
        # Root reads any file through CAP_DAC_OVERRIDE: run verify as root without
        # it (and without CAP_DAC_READ_SEARCH), so file modes apply as for a user.
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    files = {f["path"]: f for f in json.loads(r.stdout)["files"]}
    assert files[BIG]["status"] == UNREADABLE
    assert "permission denied" in files[BIG]["detail"].lower()
    assert sum(f["status"] == OK for f in files.values()) == 145


def test_a_zero_filled_file_is_called_out(copy_ckpt):
    # An incomplete torrent download is often a preallocated file of zeros.
    root = copy_ckpt()
    size = (root / BIG).stat().st_size
    (root / BIG).write_bytes(bytes(size))
    bad = by_path(verify(root))[BIG]
    assert bad.status == FAILED and bad.zero_filled
    assert bad.bad_ranges == [(0, size - 1)]
    assert "all zero" in bad.detail


def test_quick_checks_sizes_and_a_sample_of_chunks(copy_ckpt):
    root = copy_ckpt()
    r = verify(root, quick=True, seed=1)
    assert r.ok and not r.content_proven
    assert r.bytes_hashed < load_manifest(root / MANIFEST_NAME).total_size
    assert "quick: size and 2 of 5 chunks" in by_path(r)[BIG].detail
    flip_byte(root / BIG, 1000)  # in the payload of the first chunk, which is always sampled
    assert by_path(verify(root, quick=True))[BIG].bad_ranges == [(0, CHUNK - 1)]
    zeroed = root / "ckpt-0/tensor00002_000"
    zeroed.write_bytes(bytes(zeroed.stat().st_size))  # preallocated, never written
    got = by_path(verify(root, quick=True))["ckpt-0/tensor00002_000"]
    assert got.status == FAILED and "zero" in got.detail


def test_sha256_vouches_where_the_manifest_has_it(copy_ckpt, tmp_path):
    root = copy_ckpt()
    m = load_manifest(root / MANIFEST_NAME)
    sha = hashing.sha256_file(root / BIG)
    files = [
        FileEntry(path=BIG, size=m.file(BIG).size, sha256=sha),  # SHA-256 only
        FileEntry(path="ckpt-0/tensor00001_000", size=m.file("ckpt-0/tensor00001_000").size,
                  blake3=m.file("ckpt-0/tensor00001_000").blake3,
                  sha256=hashing.sha256_file(root / "ckpt-0/tensor00001_000")),
    ]
    r = verify(root, manifest=Manifest(name="two", files=files))
    got = by_path(r)
    assert got[BIG].line() == f"{BIG}: OK (sha256)" and got[BIG].hashes == ("sha256",)
    assert got[BIG].vouched_by.startswith("manifest:")  # the manifest's own SHA-256 digest
    assert got["ckpt-0/tensor00001_000"].line() == "ckpt-0/tensor00001_000: OK (blake3, sha256)"
    assert r.trust == "manifest"
    # every other tensor file is not in this manifest: nothing vouches for it, so the
    # run is not proven (an EXTRA would let `verify && load` accept them)
    assert r.summary[EXTRA] == 0 and r.summary[UNVERIFIED] == 144
    assert r.ok and not r.proven and "the root of trust does not list" in r.unproven
    flip_byte(root / BIG, 5)
    assert by_path(verify(root, manifest=Manifest(name="two", files=files)))[BIG].detail == (
        "sha256 hash mismatch"
    )


def test_without_a_root_of_trust_structure_is_checked_and_content_said_unverified(copy_ckpt):
    root = copy_ckpt()
    (root / MANIFEST_NAME).unlink()
    r = verify(root)
    assert r.trust is None and r.ok and not r.content_proven
    f = by_path(r)[BIG]
    assert f.status == UNVERIFIED
    assert f.detail == ("structure OK: language_model/in_out_embed; "
                        "content not verified (no root of trust)")
    assert "--torrent FILE --pin" in r.advice
    # structure still catches a damaged header, and names zero-filled files
    (root / "ckpt-0/tensor00002_000").write_bytes(bytes(1000))
    bad = by_path(verify(root))["ckpt-0/tensor00002_000"]
    assert bad.status == FAILED and "zero" in bad.detail


def test_a_malformed_or_unsafe_manifest_is_refused(copy_ckpt, tmp_path):
    root = copy_ckpt()
    d = json.loads((root / MANIFEST_NAME).read_text())
    d["files"][0]["path"] = "../../etc/passwd"
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(d))
    with pytest.raises(ManifestError, match=r"\.\."):
        verify(root, manifest=evil)
    (root / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        verify(root)
    with pytest.raises(UsageError):
        verify(tmp_path / "nowhere")


def test_pin_trust_on_first_use_reproduces_the_synthesized_manifest(copy_ckpt):
    root = copy_ckpt()
    original = load_manifest(root / MANIFEST_NAME)
    (root / MANIFEST_NAME).unlink()
    with pytest.raises(UsageError, match="nothing to pin against"):
        pin(root, chunk_size=CHUNK)  # no root of trust, and first use not asked for
    out = pin(root, first_use=True, chunk_size=CHUNK).path
    pinned = load_manifest(out)
    assert out == root / MANIFEST_NAME and pinned.pinned
    assert [r.kind for r in pinned.pinned_by] == ["first-use"]
    assert [(f.path, f.size, f.blake3, f.chunks, f.param) for f in pinned.files] == [
        (f.path, f.size, f.blake3, f.chunks, f.param) for f in original.files
    ]
    r = verify(root)
    assert r.ok and r.content_proven and not r.proven  # first use proves only "unchanged"
    assert "pinned on first use" in r.root_of_trust
    assert verify(root, accept_first_use=True).proven


def test_pin_carries_the_base_manifest_and_refuses_wrong_sizes(copy_ckpt):
    root = copy_ckpt()
    base = load_manifest(root / MANIFEST_NAME)
    base = base.with_files([FileEntry(path=f.path, size=f.size, sha256="ab" * 32 if i == 0
                                      else None, param=f.param) for i, f in
                            enumerate(base.files)], pinned=False, chunk_size=CHUNK)
    # a SHA-256 the pin would carry is checked in the pin pass: a wrong one stops it
    with pytest.raises(PinRefused, match=f"{BIG}: sha256 hash mismatch: not pinned"):
        pin(root, base=base, first_use=True)
    right = base.with_files([replace(f, sha256=None) for f in base.files])
    pinned = load_manifest(pin(root, base=right, first_use=True).path)
    assert pinned.files[0].blake3 and pinned.files[0].param == base.files[0].param
    assert pinned.config == base.config and pinned.chunk_size == CHUNK
    os.truncate(root / BIG, 5)
    with pytest.raises(PinRefused, match="5 bytes, expected 262306"):
        pin(root, base=right, first_use=True)


def test_a_repack_style_output_folder_is_verified_by_its_manifest(tmp_path):
    # No ckpt-0 here: the manifest lists the files, no structure checks apply.
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.embed.safetensors").write_bytes(os.urandom(200_000))
    base = Manifest(name="repacked", files=[
        FileEntry(path="config.json", size=2),
        FileEntry(path="model.embed.safetensors", size=200_000),
    ], repack={"layout": "per-tensor", "dtype": "keep", "compress": None})
    pin(out, base=base, chunk_size=CHUNK, first_use=True)
    r = verify(out, accept_first_use=True)
    assert r.proven and r.summary[OK] == 2 and r.trust == "pinned"
    flip_byte(out / "model.embed.safetensors", 199_999)
    bad = by_path(verify(out))["model.embed.safetensors"]
    assert bad.bad_ranges == [(3 * CHUNK, 199_999)]


def test_files_in_a_differently_named_tensor_folder_are_found(copy_ckpt, tmp_path):
    # a torrent or mirror may call the folder something else; the manifest says ckpt-0/
    root = copy_ckpt()
    manifest = load_manifest(root / MANIFEST_NAME)
    other = tmp_path / "download" / "weights"
    shutil.copytree(root / "ckpt-0", other)
    r = verify(other, manifest=manifest)
    assert r.ok and r.summary[OK] == 146
    # pinned there, it is found there next time, under the same manifest names
    (other / "tensor00004_000").unlink()
    kept = [f for f in manifest.files if f.path != "ckpt-0/tensor00004_000"]
    res = pin(other, manifest=manifest.with_files(kept))
    assert (other / MANIFEST_NAME).is_file() and res.proven
    r = verify(other)
    assert r.ok and r.summary[OK] == 145 and r.files[0].path == BIG


def test_a_packaged_manifest_is_the_fallback_root_of_trust(copy_ckpt, tmp_path, monkeypatch):
    # Like the grok-1 manifest: every size, a SHA-256 for some files, no BLAKE3.
    root = copy_ckpt()
    m = load_manifest(root / MANIFEST_NAME)
    files = [FileEntry(path=f.path, size=f.size, param=f.param, kind=f.kind, arrays=f.arrays,
                       sha256=hashing.sha256_file(root / f.path) if f.path == BIG else None)
             for f in m.files]
    packaged = tmp_path / "manifests"
    packaged.mkdir()
    save_manifest(Manifest(name="grok-mini", files=files, config=m.config), packaged /
                  "grok-mini.json")
    monkeypatch.setenv("GROKFETCH_MANIFESTS", str(packaged))
    (root / MANIFEST_NAME).unlink()
    os.truncate(root / "ckpt-0/tensor00007_000", 100)
    r = verify(root)
    got = by_path(r)
    assert r.trust == "packaged" and "grok-mini" in r.root_of_trust
    assert got[BIG].line() == f"{BIG}: OK (sha256)"
    assert got["ckpt-0/tensor00007_000"].detail.startswith("truncated: 100 of ")
    assert got["ckpt-0/tensor00001_000"].status == UNVERIFIED
    assert "no hash for it in the manifest" in got["ckpt-0/tensor00001_000"].detail
    assert "--torrent FILE --pin" in r.advice


def test_progress_counts_every_byte_hashed_into_one_bar(mini_ckpt):
    bars = []

    class Bar:
        def __init__(self, total, desc):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    r = verify(mini_ckpt, progress=Bar, jobs=3)
    (bar,) = bars
    assert bar.desc == "verify" and bar.closed
    total = load_manifest(mini_ckpt / MANIFEST_NAME).total_size
    assert bar.total == bar.n == r.bytes_hashed == total


def test_quick_with_chunk_hashes_reads_no_header(mini_ckpt):
    """--quick was slower than a full verify on 770 small files (issue 13, item 19): it
    parsed every header, importing numpy to do it, although the first chunk it always
    samples covers the header.  With chunk hashes it now parses none (the pickle reader
    is not even imported)."""
    import subprocess
    import sys

    code = ("import sys; from grokfetch.integrity.verify import verify; "
            f"r = verify({str(mini_ckpt)!r}, quick=True); "
            "print(r.ok, 'grokfetch.format.pickle_reader' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["True", "False"]


@pytest.mark.parametrize("disk_rotational, most_at_once", [(True, 1), (False, 2)])
def test_on_a_rotational_disk_large_files_are_read_one_at_a_time(tmp_path, monkeypatch,
                                                                  disk_rotational, most_at_once):
    # Two streams at once make a disk that seeks move between them; a solid-state disk
    # keeps more reads in flight with several.  Small files are never held back.
    import threading

    import grokfetch.integrity.verify as engine

    monkeypatch.setattr(hashing, "THREADED_FILE", 64 * 1024)
    monkeypatch.setattr(fsutil, "_rotational_device", lambda dev: disk_rotational)
    out = tmp_path / "out"
    out.mkdir()
    sizes = {"a.bin": 300_000, "b.bin": 200_000, "c.bin": 100_000, "small.bin": 1000}
    for name, size in sizes.items():
        (out / name).write_bytes(os.urandom(size))
    base = Manifest(name="four", files=[FileEntry(path=n, size=s) for n, s in sizes.items()])
    pin(out, base=base, first_use=True)

    changed, reading, peak = threading.Condition(), [0], [0]
    real = engine.blake3_file

    def watched(path, **kw):
        large = os.path.getsize(path) >= hashing.THREADED_FILE
        with changed:
            reading[0] += large
            peak[0] = max(peak[0], reading[0])
            changed.notify_all()
            # Hold the first large file until a second one is being read beside it, if one
            # may: ungated, that happens however slow the machine; gated, not in 0.2 s.
            changed.wait_for(lambda: peak[0] >= 2, timeout=0.2 if disk_rotational else 30)
        try:
            return real(path, **kw)
        finally:
            with changed:
                reading[0] -= large

    monkeypatch.setattr(engine, "blake3_file", watched)
    r = verify(out, accept_first_use=True, jobs=2)
    assert r.proven and r.summary[OK] == 4
    assert peak[0] == most_at_once
