"""What `get` shows when nothing arrives: a live clock on a terminal, plain lines in a log,
a stall notice that says why, and a --stall-timeout that ends the wait (issue 13, items 1-4, 20).

Each scenario is staged as a user meets it: a seeder whose copy of one piece is damaged
on disk (it cannot send it), a --peer at a port nobody listens on, stderr on a real
terminal (a pty) or piped to a log.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
from pathlib import Path

from helpers import flip_byte
from lt_helpers import LOOPBACK, GetProc, SeederProc, run_in_pty, run_piped

from grokfetch import progress


def dead_port() -> int:
    """A loopback port nobody listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_seeder_that_cannot_send_a_piece_is_named_and_stall_timeout_ends_the_wait(
        tmp_path: Path, source: Path):
    damaged = tmp_path / "seed" / "grok-mini"
    shutil.copytree(source, damaged)
    flip_byte(damaged / "ckpt-0" / "tensor00005_000", 300)  # pinned: seeded lazily, fails on send
    with SeederProc(damaged) as s:
        g = GetProc(s.magnet, "--dest", str(tmp_path / "dl"), "--stall-timeout", "6")
        rc = g.wait(60)
    assert rc == 4
    notices = [m for m in g.messages() if m.startswith("no data for")]
    assert notices and "none of them has piece" in notices[-1], g.messages()
    assert "ckpt-0/tensor00005_000 bytes 0-" in notices[-1]
    assert "no progress for 6 s" in g.stderr and "state saved" in g.stderr
    # the JSON stream ends with an event saying how it ended (item 17)
    last = g.snapshot()[-1]
    assert last["event"] == "error" and last["exit_code"] == 4
    assert "none of them has piece" in last["message"]


def test_a_peer_at_a_dead_port_is_said_to_refuse(tmp_path: Path, source: Path):
    port = dead_port()
    g = GetProc(str(source / "ckpt-0.torrent"), "--dest", str(tmp_path / "dl"),
                "--peer", f"127.0.0.1:{port}", "--timeout", "8")
    assert g.wait(60) == 4
    assert any(m == f"cannot connect to 127.0.0.1:{port}: connection refused (retrying every "
               "5 s)" for m in g.messages()), g.messages()
    assert "not complete after 8 s" in g.stderr
    assert f"127.0.0.1:{port}: connection refused" in g.stderr


def test_on_a_terminal_the_clock_keeps_moving_during_a_stall(tmp_path: Path, source: Path):
    rc, shown = run_in_pty(["get", str(source / "ckpt-0.torrent"), "--dest", str(tmp_path / "dl"),
                            "--peer", f"127.0.0.1:{dead_port()}", *LOOPBACK,
                            "--stall-timeout", "5"])
    assert rc == 4, shown
    # tqdm's elapsed clock, redrawn by the timer although not a byte arrives
    clocks = set(re.findall(r"\[00:0(\d)<", shown))
    assert {"1", "2", "3"} <= clocks, shown
    # decimal units, like every summary: 7,743,948 bytes are 7.74 MB, not 7.39 MiB
    assert "/7.74M" in shown and "7.39M" not in shown
    assert "no progress for 5 s" in shown


def test_with_stderr_in_a_log_a_summary_line_comes_periodically(tmp_path: Path, source: Path):
    r = run_piped(["get", str(source / "ckpt-0.torrent"), "--dest", str(tmp_path / "dl"),
                   "--peer", f"127.0.0.1:{dead_port()}", *LOOPBACK, "--stall-timeout", "5"],
                  env={"GROKFETCH_PROGRESS_INTERVAL": "1"})
    assert r.returncode == 4
    lines = [x for x in r.stderr.splitlines() if x.startswith("get: ")]
    assert len(lines) >= 3, r.stderr
    assert lines[0].startswith("get: 0 B of 7.7 MB (0.0%), 0 B/s, elapsed 0:01"), lines[0]
    assert "\r" not in r.stderr and "\x1b" not in r.stderr  # no bar drawn into a log


def test_bar_rate_counts_only_this_runs_bytes(monkeypatch):
    """Resuming at 60%: the bar shows 600 kB done at 0 B/s, not a speed made of old bytes."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    b = progress.LiveBar(1_000_000, "get", initial=600_000)
    b._tick()
    b.close()
    shown = out.getvalue()
    assert "600k/1.00M" in shown
    assert re.search(r"(\?|0\.00)B/s", shown), shown


def test_bar_rate_falls_to_zero_when_nothing_arrives(monkeypatch):
    import time

    monkeypatch.setattr("sys.stderr", io.StringIO())
    b = progress.LiveBar(10_000_000, "get")
    time.sleep(0.15)
    b.update(5_000_000)
    fast = b._bar.format_dict["rate"]
    for _ in range(8):  # the timer's ticks in a stall
        time.sleep(0.55)
        b._tick()
    slow = b._bar.format_dict["rate"]
    b.close()
    assert fast and slow < fast / 10


def test_log_line_mode_reports_a_stall_as_zero_rate():
    b = progress.LineBar(2_000_000, "verify", every=0)
    b.update(1_000_000)
    first = b.line()
    second = b.line()  # nothing arrived since
    assert first.startswith("verify: 1.0 MB of 2.0 MB (50.0%), ")
    assert ", 0 B/s, elapsed " in second and "ETA" not in second


def test_get_shows_its_pin_pass(tmp_path: Path, source: Path):
    with SeederProc(source) as s:
        g = GetProc(s.magnet, "--dest", str(tmp_path / "dl"))
        assert g.wait(60) == 0, g.stderr
    said = g.messages()
    assert any(re.fullmatch(r"pinning: hashing [\d,]+ bytes", m) for m in said), said
    assert json.dumps(g.result())  # the run still ends with its result

