"""Benchmark `grokfetch get` against aria2c on the same torrent from the same loopback seeder.

    python bench/get.py [--size-mb 1024] [--files 8] [--rounds 2] [--workdir /tmp]
    python bench/get.py --size-mb 256 --rounds 1     # a quick run

What it does, all on 127.0.0.1 (TCP only, no DHT/LSD/UPnP/NAT-PMP):

1. writes FILES random files (SIZE_MB in all) named like checkpoint tensors
   into a temp folder under WORKDIR, and makes a v1 torrent of them;
2. starts one `grokfetch seed` (a libtorrent session in a subprocess) and a
   tiny HTTP tracker that answers every announce with the seeder's address
   (aria2c cannot be given a peer address directly);
3. for each round, fetches the torrent with `grokfetch get --no-utp --peer
   SEEDER` and with `aria2c --bt-tracker=TRACKER` (the order alternates per
   round), timing each from process start to exit, and checks the bytes;
4. times `cp -r` of the same files on this disk: the raw limit;
5. prints MB/s (10^6 bytes/s) of each, and the ratio, then deletes everything;
   for grokfetch also the time of each phase (start-up until it listens, the
   download until every piece is verified and flushed, the BLAKE3 pin pass,
   the exit), which is what says where the time goes.

The target from issue 4 is at least 1.5x aria2c.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from grokfetch.format.metainfo import make_torrent  # noqa: E402

LOOPBACK = ["--listen", "127.0.0.1:0", "--no-dht", "--no-utp"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["GROKFETCH_NO_PROGRESS"] = "1"
    return e


def write_data(folder: Path, size_mb: int, files: int) -> int:
    ckpt = folder / "ckpt-0"
    ckpt.mkdir(parents=True)
    per = size_mb * 1_000_000 // files
    block = os.urandom(1 << 20)
    total = 0
    for i in range(files):
        with open(ckpt / f"tensor{i:05d}_000", "wb") as f:
            left = per + i * 4099  # uneven sizes: pieces span file boundaries
            while left > 0:
                n = min(left, len(block))
                # vary each block so no two pieces are alike
                f.write(block[:n] if n < len(block) else block)
                block = block[1:] + block[:1] if i % 2 else block[7:] + block[:7]
                left -= n
                total += n
    return total


class Tracker:
    """An HTTP tracker that knows one peer: the seeder."""

    def __init__(self, peer_port: int) -> None:
        compact = bytes([127, 0, 0, 1]) + peer_port.to_bytes(2, "big")
        body = b"d8:intervali60e5:peers6:" + compact + b"e"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/announce"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def start_seeder(folder: Path, torrent: Path) -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen(
        [sys.executable, "-m", "grokfetch", "seed", str(folder), "--torrent", str(torrent),
         *LOOPBACK, "--json-progress", "--full-check"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env(), cwd=REPO,
    )
    assert p.stdout is not None
    for line in p.stdout:
        ev = json.loads(line)
        if ev.get("event") == "seeding":
            # keep draining stdout so the seeder never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p, int(ev["port"])
    raise SystemExit("seeder did not start")


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env(), cwd=REPO, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} {cmd[1:3]} failed ({r.returncode}): {r.stderr[-1000:]}")
    return dt


def timed_get(cmd: list[str]) -> tuple[float, dict[str, float]]:
    """Run `grokfetch get ... --json-progress`: its wall time and when each phase ended
    (seconds from the start): 'listening' (start-up), 'complete' (every piece verified
    and flushed), 'pinned' (the BLAKE3 pin pass).  What bounds `get` is in the gaps."""
    t = time.perf_counter()
    p = subprocess.Popen([*cmd, "--json-progress"], env=env(), cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    marks: dict[str, float] = {}
    for line in p.stdout:
        message = json.loads(line).get("message", "")
        for mark, prefix in (("listening", "listening on"), ("complete", "complete:"),
                             ("pinned", "pinned manifest")):
            if message.startswith(prefix):
                marks[mark] = time.perf_counter() - t
    rc = p.wait()
    dt = time.perf_counter() - t
    if rc != 0:
        err = p.stderr.read()[-1000:] if p.stderr else ""
        raise SystemExit(f"grokfetch get failed ({rc}): {err}")
    return dt, marks


def same_tree(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--piece-size", type=int, default=None, help="bytes (default: automatic)")
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()
    if shutil.which("aria2c") is None:
        raise SystemExit("aria2c not found (apt-get install aria2)")

    work = Path(tempfile.mkdtemp(prefix="grokfetch-bench-get-", dir=args.workdir))
    seeder = None
    tracker = None
    try:
        src = work / "src"
        total = write_data(src, args.size_mb, args.files)
        torrent = make_torrent(src, piece_size=args.piece_size, out=work / "bench.torrent")
        seeder, port = start_seeder(src, torrent)
        tracker = Tracker(port)
        print(f"data: {args.files} files, {total / 1e6:.0f} MB; seeder on 127.0.0.1:{port}",
              flush=True)
        results: dict[str, list[float]] = {"grokfetch": [], "aria2c": []}
        phases: dict[str, list[float]] = {"start-up": [], "download": [], "pin": [], "exit": []}
        for rnd in range(args.rounds):
            order = ["grokfetch", "aria2c"] if rnd % 2 == 0 else ["aria2c", "grokfetch"]
            for who in order:
                dest = work / f"{who}-{rnd}"
                if who == "grokfetch":
                    cmd = [sys.executable, "-m", "grokfetch", "get", str(torrent), "--dest",
                           str(dest), "--peer", f"127.0.0.1:{port}", *LOOPBACK,
                           "--no-space-check"]
                else:
                    cmd = ["aria2c", "--dir", str(dest), f"--bt-tracker={tracker.url}",
                           "--enable-dht=false", "--enable-dht6=false",
                           "--bt-enable-lpd=false", "--enable-peer-exchange=false",
                           "--seed-time=0", "--file-allocation=none", "--quiet=true",
                           "--listen-port=51413-51499", "--summary-interval=0",
                           str(torrent)]
                if who == "grokfetch":
                    dt, marks = timed_get(cmd)
                    ends = [marks.get(k, dt) for k in ("listening", "complete", "pinned")]
                    for name, a, b in zip(phases, [0.0, *ends], [*ends, dt], strict=True):
                        phases[name].append(b - a)
                    print("  grokfetch phases: " + ", ".join(
                        f"{k} {v[-1]:.2f} s" for k, v in phases.items()) +
                        f" (download {total / phases['download'][-1] / 1e6:.0f} MB/s, pin "
                        f"{total / phases['pin'][-1] / 1e6:.0f} MB/s)", flush=True)
                else:
                    dt = timed(cmd)
                if not same_tree(src / "ckpt-0", dest / "ckpt-0"):
                    raise SystemExit(f"{who}: downloaded files differ from the source")
                results[who].append(total / dt / 1e6)
                print(f"round {rnd + 1}: {who:9s} {dt:6.2f} s  {total / dt / 1e6:7.1f} MB/s",
                      flush=True)
                shutil.rmtree(dest)
        subprocess.run(["sync"], check=True)  # start the copy with no dirty pages pending
        t = time.perf_counter()
        subprocess.run(["cp", "-r", str(src / "ckpt-0"), str(work / "cp")], check=True)
        cp_rate = total / (time.perf_counter() - t) / 1e6
        subprocess.run(["sync"], check=True)
        cp_sync_rate = total / (time.perf_counter() - t) / 1e6
        for label, pick in (("best", max), ("median", statistics.median)):
            g = pick(results["grokfetch"])
            a = pick(results["aria2c"])
            print(f"{label} of {args.rounds}: grokfetch get --no-utp {g:.1f} MB/s, "
                  f"aria2c {a:.1f} MB/s, ratio {g / a:.2f}x (target >= 1.5x)")
        print(f"raw limit, copying the same files: cp -r {cp_rate:.1f} MB/s (into the page "
              f"cache, as the downloads write), cp -r + sync {cp_sync_rate:.1f} MB/s (to disk)")
        print("(grokfetch's time includes pinning: a BLAKE3 pass over the downloaded files)")
        print("grokfetch phases, medians: " + ", ".join(
            f"{k} {statistics.median(v):.2f} s" for k, v in phases.items()))
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if tracker is not None:
            tracker.close()
        if seeder is not None:
            seeder.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                seeder.wait(timeout=15)
            if seeder.poll() is None:
                seeder.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
