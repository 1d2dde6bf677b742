"""SIGTERM (kill, systemd, Kubernetes, `timeout`) ends every long command like Ctrl-C:
exit 130 with a message, state saved where it applies (issue 13, item 13).

Each command runs in a real process; the signal is sent once it is visibly at work (its
progress line in a log, or its first output on disk).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lt_helpers import REPO

from grokfetch.synth import synthesize


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big") / "grok-48"
    synthesize(root, "mini", num_layers=48, seed=1)
    return root


class Started:
    """A grokfetch process whose stderr is collected as it comes (progress lines every
    0.01 s: each phase shows it is at work)."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), GROKFETCH_PROGRESS_INTERVAL="0.01")
        env.pop("GROKFETCH_NO_PROGRESS", None)
        self.p = subprocess.Popen([sys.executable, "-m", "grokfetch", *args], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line)

    def printed(self, prefix: str):
        return lambda: any(x.startswith(prefix) for x in self.lines)

    def term_when(self, ready, timeout: float = 60.0) -> tuple[int, str]:
        """SIGTERM as soon as ``ready()`` holds; the exit code and stderr."""
        deadline = time.monotonic() + timeout
        while not ready() and self.p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(60)
        self._t.join(10)
        return rc, "".join(self.lines)


def test_sigterm_stops_synth_with_130(tmp_path: Path):
    p = Started("synth", str(tmp_path / "s"), "--layers", "64")
    rc, err = p.term_when(p.printed("synth: "))
    assert rc == 130, err
    assert err.rstrip().endswith("Interrupted.")
    assert not list((tmp_path / "s").rglob(".grokfetch-tmp-*"))  # no half-written file kept


def test_sigterm_stops_smoke_all_with_130(big: Path):
    p = Started("smoke", str(big), "--all", "--tokens", ",".join(str(i) for i in range(1, 60)))
    rc, err = p.term_when(p.printed("smoke "))
    assert rc == 130, err
    assert err.rstrip().endswith("Interrupted.")


def test_sigterm_stops_verify_pin_with_130(big: Path, tmp_path: Path):
    folder = tmp_path / "copy"
    shutil.copytree(big, folder)
    (folder / "grokfetch-manifest.json").unlink()
    for _attempt in range(3):  # on an idle machine pinning 40 MB can beat the signal
        p = Started("verify", str(folder), "--pin", "--trust-on-first-use", "--quiet")
        rc, err = p.term_when(p.printed("pin: "))
        if rc != 0:
            break
        (folder / "grokfetch-manifest.json").unlink()
    assert rc == 130, err
    assert err.rstrip().endswith("Interrupted.")
    assert not (folder / "grokfetch-manifest.json").exists()  # nothing half-pinned


def test_sigterm_stops_repack_and_the_rerun_keeps_its_work(big: Path, tmp_path: Path):
    dest = tmp_path / "st"
    for _attempt in range(3):  # on an idle machine a small repack can beat the signal
        p = Started("repack", str(big), str(dest), "--dtype", "f32", "--jobs", "1", "--force")
        rc, err = p.term_when(lambda: any(dest.glob("layer-*/*.safetensors")))
        if rc != 0:
            break
    assert rc == 130, err
    assert "Error: repack stopped" in err or err.rstrip().endswith("Interrupted.")
    assert not (dest / "grokfetch-manifest.json").exists()
    r = subprocess.run([sys.executable, "-m", "grokfetch", "repack", str(big), str(dest),
                        "--dtype", "f32", "--jobs", "1"], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "already done" in r.stdout and " 0 already done" not in r.stdout


def test_a_second_repack_into_the_same_folder_is_refused_while_the_first_runs(big: Path,
                                                                               tmp_path: Path):
    """Item 14: the loser used to exit 5 with a misleading "cannot write"."""
    dest = tmp_path / "st"
    first = Started("repack", str(big), str(dest), "--dtype", "f32", "--jobs", "1")
    deadline = time.monotonic() + 60
    while not any(dest.glob("layer-*/*.safetensors")) and first.p.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    second = subprocess.run([sys.executable, "-m", "grokfetch", "repack", str(big), str(dest),
                             "--dtype", "f32"], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    running = first.p.poll() is None
    rc, err = first.term_when(lambda: False, timeout=0)  # stop the first, or see it done
    if running:  # the first was still at work when the second started
        assert second.returncode == 2, second.stderr
        assert second.stderr == (f"Error: {dest}: another `grokfetch repack` is writing into "
                                 "this folder; wait for it to finish (or stop it) and rerun\n")


def test_smoke_all_and_repacks_source_hashing_report_progress_in_a_log(big: Path,
                                                                      tmp_path: Path):
    """Item 4: no long phase is silent - smoke --all counts layers; repack hashes an
    unpinned source from the bytes its copy reads, so its one bar runs from the start
    of the copy to its end (no silent hashing phase before it)."""
    p = Started("smoke", str(big), "--all")
    rc, err = p.term_when(lambda: False, timeout=120)
    assert rc == 0, err
    assert re.search(rf"^smoke {re.escape(str(big))}: \d+ layers? of 48 layers \(", err, re.M)
    src = tmp_path / "src"
    shutil.copytree(big, src)
    (src / "grokfetch-manifest.json").unlink()  # no source hashes known: repack hashes them
    p = Started("repack", str(src), str(tmp_path / "st"), "--jobs", "1")
    rc, err = p.term_when(lambda: False, timeout=120)
    assert rc == 0, err
    # Whether a line lands before the first byte is copied is a race with the ticker;
    # that the bar is already counting while most of the copy is still ahead is not.
    done = [float(x) for x in re.findall(r"^repack: [\d.]+ [kMG]?B of [\d.]+ MB \(([\d.]+)%\)",
                                         err, re.M)]
    assert len(done) >= 2, err
    assert done[0] < 50.0 and done == sorted(done), err
