"""Repack survives SIGKILL and refuses bad sources without leaving a partial file."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_repack import assert_manifest_verifies

import grokfetch
from grokfetch.cli import cli
from grokfetch.format.folder import JOURNAL_NAME
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest
from grokfetch.fsutil import TMP_MARK
from grokfetch.repack import run as repack_mod
from grokfetch.repack.run import repack

CHUNK = 64 * 1024
REPO = Path(grokfetch.__file__).resolve().parent.parent


def stall_after(n: int) -> str:
    """Python source that makes the repack in this process finish ``n`` outputs, then hang
    part-way through writing each further one (a temp file on disk) until it is killed."""
    return f"""
import threading
import grokfetch.repack.run as _repack
_write, _started = _repack.write_safetensors, []
def _write_then_stall(*args, on_bytes, **kwargs):
    _started.append(None)
    if len(_started) > {n}:
        def on_bytes(k, _inner=on_bytes):
            _inner(k)
            threading.Event().wait()
    return _write(*args, on_bytes=on_bytes, **kwargs)
_repack.write_safetensors = _write_then_stall
"""


def outputs(dest: Path) -> dict[str, tuple[int, str]]:
    """path -> (size, blake3) of every file the DEST manifest lists."""
    return {e.path: (e.size, e.blake3) for e in load_manifest(dest / MANIFEST_NAME).files}


def journaled(dest: Path) -> list[str]:
    """Outputs the journal of a (killed) run records as finished."""
    lines = (dest / JOURNAL_NAME).read_text().splitlines() if (dest / JOURNAL_NAME).exists() else []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line)["entry"]["path"])
        except (ValueError, KeyError):
            pass  # a line cut short by the kill
    return out


def test_sigkill_part_way_then_rerun_gives_the_same_result(mini_ckpt, tmp_path):
    ref = tmp_path / "ref"
    repack(mini_ckpt, ref, chunk_size=CHUNK)

    dest = tmp_path / "dest"
    env = dict(os.environ, GROKFETCH_NO_PROGRESS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Same small chunk size as the reference run, so the two manifests compare equal.
    code = stall_after(15) + ("import sys; from grokfetch.repack.run import repack; "
                              f"repack(sys.argv[1], sys.argv[2], jobs=1, chunk_size={CHUNK})")
    proc = subprocess.Popen([sys.executable, "-c", code, str(mini_ckpt), str(dest)], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(journaled(dest)) < 15:
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:  # a failed assertion above: the run still hangs
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (dest / MANIFEST_NAME).exists()
    finished = journaled(dest)
    assert 15 <= len(finished) < 146
    before = {rel: ((dest / rel).stat().st_ino, (dest / rel).stat().st_mtime_ns)
              for rel in finished}

    res = repack(mini_ckpt, dest, chunk_size=CHUNK)
    assert set(finished) <= set(res.skipped)
    assert len(res.written) + len(res.skipped) == 146
    after = {rel: ((dest / rel).stat().st_ino, (dest / rel).stat().st_mtime_ns)
             for rel in finished}
    assert after == before  # finished files were not rewritten
    assert outputs(dest) == outputs(ref)  # byte-identical to an uninterrupted run
    assert not list(dest.rglob(f"{TMP_MARK}*")) and not (dest / JOURNAL_NAME).exists()
    assert_manifest_verifies(dest)


def test_sigkill_via_the_cli_then_rerun_via_the_cli(mini_ckpt, tmp_path):
    """The user's view: kill `python -m grokfetch repack`, run the same command again."""
    dest = tmp_path / "cli"
    env = dict(os.environ, GROKFETCH_NO_PROGRESS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["repack", str(mini_ckpt), str(dest), "-j", "2", "--dtype", "bf16"]
    cmd = [sys.executable, "-m", "grokfetch", *args]
    # The same command line through the same entry point, made to hang after 10 outputs.
    stalling = [sys.executable, "-c", stall_after(10) + "from grokfetch.cli import main; main()",
                *args]
    proc = subprocess.Popen(stalling, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(journaled(dest)) < 10:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    done = set(journaled(dest))
    before = {rel: ((dest / rel).stat().st_ino, (dest / rel).stat().st_mtime_ns) for rel in done}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({146 - len(done)} written, {len(done)} already done)" in rerun.stdout
    assert {rel: ((dest / rel).stat().st_ino, (dest / rel).stat().st_mtime_ns)
            for rel in done} == before
    ref = tmp_path / "ref"
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(ref), "--dtype", "bf16", "-q"])
    assert r.exit_code == 0
    assert outputs(dest) == outputs(ref)
    assert_manifest_verifies(dest)


# -- bad sources ------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[2:6] = b"\xff\xfe\xfd\xfc"  # inside the pickle framing
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _hostile(path: Path) -> None:
    path.write_bytes(pickle.dumps(_Evil(), protocol=4))


def _zero_fill(path: Path) -> None:
    path.write_bytes(b"\x00" * path.stat().st_size)


def _remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage, message", [
    (_corrupt, ""),
    (_truncate, ""),
    (_hostile, "forbidden global"),
    (_zero_fill, "zero bytes"),
    (_remove, "missing"),
])
def test_bad_source_stops_the_run_naming_the_file(copy_ckpt, tmp_path, damage, message):
    src = copy_ckpt()
    bad = src / "ckpt-0" / "tensor00026_000"  # layer 10's moe/linear, mid-way in the plan
    damage(bad)
    dest = tmp_path / "out"
    r = CliRunner().invoke(cli, ["repack", str(src), str(dest), "--dtype", "bf16"])
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith(f"Error: {bad}") and message in r.stderr
    assert "Traceback" not in r.stderr
    # Sources are checked before anything is written: no file at all, partial or whole.
    assert not dest.exists() or not [p for p in dest.rglob("*") if p.is_file()]


@pytest.mark.parametrize("dtype", ["keep", "bf16"])
def test_source_cut_short_during_the_run_leaves_no_partial_file(copy_ckpt, tmp_path,
                                                                monkeypatch, dtype):
    """A file that passed the checks and then shrank (another process truncating it)."""
    src = copy_ckpt()
    bad = src / "ckpt-0" / "tensor00026_000"
    real_scan = repack_mod.scan_sources

    def scan_then_truncate(*args, **kwargs):
        found = real_scan(*args, **kwargs)
        _truncate(bad)
        return found

    monkeypatch.setattr(repack_mod, "scan_sources", scan_then_truncate)
    dest = tmp_path / "out"
    r = CliRunner().invoke(cli, ["repack", str(src), str(dest), "--dtype", dtype, "-j", "1"])
    assert r.exit_code == 3 and str(bad) in r.stderr
    assert not list(dest.rglob(f"{TMP_MARK}*"))
    assert not (dest / MANIFEST_NAME).exists()
    # What finished before the failure is journaled and whole; nothing else is there.
    files = {str(p.relative_to(dest)) for p in dest.rglob("*.safetensors")}
    assert files == set(journaled(dest))
    assert "layer-10/transformer.decoder_layer_10.moe.linear.safetensors" not in files


def test_source_size_must_match_the_pinned_manifest(copy_ckpt, tmp_path):
    src = copy_ckpt()
    bad = src / "ckpt-0" / "tensor00013_000"
    with open(bad, "ab") as f:
        f.write(b"\x00" * 10)
    r = CliRunner().invoke(cli, ["repack", str(src), str(tmp_path / "o")])
    assert r.exit_code == 3
    assert str(bad) in r.stderr


def test_ctrl_c_while_hashing_the_sources_stops_without_hashing_the_rest(copy_ckpt, tmp_path,
                                                                          monkeypatch):
    # Without a pin every source is hashed (318 GB for Grok-1): by the write that copies
    # it, and on a rerun once more for the outputs already done (their records must be of
    # these very bytes).  Ctrl-C in either must not wait for the queued files, and leaves
    # a DEST the next run continues.
    from grokfetch.format.safetensors import SourceTap

    src = copy_ckpt()
    (src / MANIFEST_NAME).unlink()
    fed = []
    real_feed = SourceTap.feed

    def feed(self, *args, **kw):
        fed.append(self.path)
        if len(fed) == 40:
            raise KeyboardInterrupt
        return real_feed(self, *args, **kw)

    monkeypatch.setattr(SourceTap, "feed", feed)
    dest = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        repack(src, dest, jobs=2)
    assert not (dest / MANIFEST_NAME).exists() and not list(dest.rglob(f"{TMP_MARK}*"))
    monkeypatch.setattr(SourceTap, "feed", real_feed)
    done_first = len((dest / JOURNAL_NAME).read_text().splitlines())
    assert 0 < done_first < 146

    real = repack_mod.blake3_file
    calls = []

    def hashed(path, *args, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, *args, **kw)

    monkeypatch.setattr(repack_mod, "blake3_file", hashed)
    with pytest.raises(KeyboardInterrupt):
        repack(src, dest, jobs=2)  # hashes the sources of what the first run finished
    # at most the few files parallel_map had started or queued (2 per thread) go on
    assert len(calls) <= 3 + 2 * 2 < done_first
    assert not (dest / MANIFEST_NAME).exists() and not list(dest.rglob(f"{TMP_MARK}*"))
    monkeypatch.setattr(repack_mod, "blake3_file", real)
    again = repack(src, dest, jobs=2)
    assert len(again.written) + len(again.skipped) == 146 and len(again.skipped) == done_first


def test_smoke_on_an_unfinished_repack_says_to_finish_it(mini_ckpt, tmp_path, monkeypatch):
    dest = tmp_path / "o"

    real = repack_mod.write_safetensors
    count = []

    def write_then_stop(*args, **kw):
        if count:
            raise KeyboardInterrupt
        count.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(repack_mod, "write_safetensors", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        repack(mini_ckpt, dest, jobs=1)
    assert (dest / JOURNAL_NAME).is_file() and not (dest / MANIFEST_NAME).exists()
    r = CliRunner().invoke(cli, ["smoke", str(dest)])
    assert r.exit_code == 2
    assert r.stderr == (f"Error: {dest}: an unfinished repack (its journal, no manifest yet); "
                        "rerun the same grokfetch repack command to finish it\n")
