"""`grokfetch demo` runs the whole pipeline for real and cleans up after itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from click.testing import CliRunner

from grokfetch.cli import cli


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    r = CliRunner().invoke(cli, ["demo", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["passed"]
    names = [s["stage"] for s in d["stages"]]
    assert names == [
        "grokfetch synth", "make torrent + start seeder", "grokfetch get MAGNET --peer",
        "grokfetch verify --torrent --pin", "grokfetch verify (pinned BLAKE3)",
        "grokfetch repack --format safetensors", "grokfetch verify REPACKED",
        "grokfetch smoke --all", "grokfetch smoke --all --compare REPACKED",
    ]
    assert all(s["passed"] for s in d["stages"])
    # Every synthesized byte came over the wire and was proven by the torrent's pieces.
    assert d["bytes_verified"] == d["bytes_synthesized"] > 1_000_000
    assert "bit-identical" in d["stages"][-1]["detail"]
    assert d["seeder_stopped"] and _gone(d["seeder_pid"])
    assert list(tmp_path.iterdir()) == []  # the work folder was removed


def test_demo_keep_leaves_the_folders(tmp_path):
    r = CliRunner().invoke(cli, ["demo", "--keep", str(tmp_path / "kept"), "--layers", "2"])
    assert r.exit_code == 0, r.output
    assert "every stage passed" in r.stdout
    kept = tmp_path / "kept"
    assert (kept / "leecher" / "grokfetch-manifest.json").is_file()
    assert (kept / "repacked" / "grokfetch-manifest.json").is_file()


def test_ctrl_c_stops_cleanly(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), GROKFETCH_NO_PROGRESS="1")
    p = subprocess.Popen([sys.executable, "-m", "grokfetch", "demo"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if "start seeder" in line or not line:
            break
    assert "start seeder" in line
    seeder_pid = int(line.split("pid ")[-1].rstrip(")\n")) if "pid " in line else None
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    if seeder_pid:
        assert _gone(seeder_pid)
    # nothing left running from the demo, nothing left on disk
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
    assert list(tmp_path.iterdir()) == []
