"""Benchmark a cluster fan-out: 1 seeder and N leechers on 127.0.0.1, every node capped.

    python bench/cluster.py [--nodes 4,8,16] [--size-mb 300] [--cap 4M]
                            [--levers super-seed,default]

About 11 minutes with the defaults (ideal broadcast 71.6 s, six fan-outs); for a
few minutes, ``--size-mb 40`` (ideal 9.6 s, where the fixed start-up costs below
dominate).

What it does, all on 127.0.0.1 (TCP only, no DHT/LSD/UPnP/NAT-PMP), for each N:

1. writes a synthetic checkpoint-shaped folder (SIZE_MB in FILES files) and a
   v1 torrent of it;
2. starts one seeder (`grokfetch seed`, upload capped at CAP) and N leechers
   as separate processes (`grokfetch get --peer SEEDER --seed`, download and
   upload capped at CAP), all at once; a leecher knows only the seeder and
   finds the others through peer exchange, as on a real cluster;
3. records when each leecher has every byte (its first progress event with
   all wanted bytes done), and the seeder's payload upload when the last one
   finished;
4. prints, per N: the time until all are done against the ideal pipelined
   broadcast (size / CAP: every node receiving at its cap from the first
   second), the slowest and fastest node, and the seeder's upload as a
   multiple of the size.

``--levers`` runs every node with libtorrent settings other than grokfetch's
defaults (the same CLI, run by this script with the change applied), to
evaluate each lever on the same data: ``default`` (the product as shipped),
``super`` (BEP 16 super-seeding on the seeder), ``slots`` (unchoke every
peer), ``rr`` / ``anti`` (round-robin / anti-leech seed choking), ``queue``
(deeper request queues), ``suggest`` (the seeder suggests pieces), ``super1``
(super-seeding until one copy has left the seeder, then normal seeding),
``tracker`` (a loopback tracker that lists every node, so leechers find each
other at once rather than through the seeder's peer exchange), ``super-seed``
(the product's ``seed --super-seed``: BEP 16 with every peer unchoked, the
lever shipped).  Several: ``--levers default,super``.

Fixed costs in every all-done time: about 2.5 s of process start-up, and with
super-seeding about 10 s before a peer gets its first piece from the seeder
(libtorrent 2.x drops the two pieces BEP 16 offers during the handshake and
offers one after a peer has been uninterested for 10 s).
Leechers always keep seeding until every node is done (the bench stops them),
which is what ``get --seed-while-needed`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from get import LOOPBACK, env, write_data  # noqa: E402 - bench/get.py, beside this file

from grokfetch.format.metainfo import make_torrent  # noqa: E402

# What each lever changes, on every node (libtorrent settings) and on the seeder alone
# (a torrent flag).  None: the product exactly as shipped.
LEVERS: dict[str, dict[str, Any] | None] = {
    "default": None,
    "super": {"_super_seeding": True},  # BEP 16, on the seeder
    "slots": {"unchoke_slots_limit": -1},  # unchoke every interested peer
    "rr": {"seed_choking_algorithm": 0},  # round_robin
    "anti": {"seed_choking_algorithm": 2},  # anti_leech
    "queue": {"request_queue_time": 10, "max_out_request_queue": 1500},
    "suggest": {"suggest_mode": 1},  # suggest_read_cache: a seeder tells peers what to take
    # BEP 16 until one copy has left the seeder (every piece sent about once), then normal
    "super1": {"_super_seeding": "until-one-copy"},
    # a tracker on the seed node listing every node that announced: leechers find each
    # other at once instead of through the seeder's peer exchange (a message a minute)
    "tracker": {"_tracker": True},
    # the product's `seed --super-seed`: BEP 16 with every peer unchoked (the shipped lever)
    "super-seed": {"_seed_args": ["--super-seed"]},
}


class SwarmTracker:
    """An HTTP tracker on 127.0.0.1 that answers each announce with every peer it has seen."""

    def __init__(self) -> None:
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        peers: dict[bytes, set[int]] = {}
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query,
                                          keep_blank_values=True)
                ih = urllib.parse.unquote_to_bytes(
                    self.path.split("info_hash=", 1)[1].split("&", 1)[0])
                port = int(q.get("port", ["0"])[0])
                with lock:
                    known = peers.setdefault(ih, set())
                    others = sorted(known - {port})
                    known.add(port)
                compact = b"".join(bytes([127, 0, 0, 1]) + p.to_bytes(2, "big") for p in others)
                body = (b"d8:intervali30e12:min intervali5e5:peers" + str(len(compact)).encode()
                        + b":" + compact + b"e")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/announce"

    def close(self) -> None:
        self.httpd.shutdown()


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[str]
    done_at: float | None = None
    last: dict[str, Any] = field(default_factory=dict)
    port: int | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def follow(self) -> None:
        """Read the node's JSON lines until it exits (so its pipe never fills)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "seeding":
                self.port = int(ev["port"])
                self.started.set()
            if ev.get("event") == "progress":
                self.last = ev
                wanted = ev.get("wanted", 0)
                if self.done_at is None and wanted > 0 and ev.get("wanted_done", 0) >= wanted:
                    self.done_at = time.monotonic()
        self.started.set()


def spawn(name: str, cmd: list[str]) -> Node:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=env(), cwd=REPO)
    node = Node(name, p)
    threading.Thread(target=node.follow, daemon=True).start()
    return node


def grokfetch_cmd(lever: str, *args: str) -> list[str]:
    """`grokfetch ARGS`, or with a lever: the same CLI with libtorrent's settings changed."""
    change = LEVERS[lever]
    if change is None or set(change) == {"_seed_args"}:  # the product's own options
        return [sys.executable, "-m", "grokfetch", *args]
    return [sys.executable, __file__, "_node", lever, *args]


def _node_with_lever(lever: str, args: list[str]) -> None:
    """Run the grokfetch CLI in this process with LEVERS[lever] applied to its sessions."""
    import libtorrent as lt

    from grokfetch.cli import main as cli_main
    from grokfetch.fetch import torrent as gt

    change = dict(LEVERS[lever] or {})
    super_seeding = change.pop("_super_seeding", False)
    change.pop("_tracker", None)  # the bench runs it and passes --tracker
    change.pop("_seed_args", None)  # passed on the seeder's command line
    shipped = gt.session_settings
    gt.session_settings = lambda net: {**shipped(net), **change}  # type: ignore[assignment]
    if super_seeding:
        start = gt.Seeder.start

        def start_super(self: Any, *a: Any, **k: Any) -> Any:
            info = start(self, *a, **k)
            self.h.set_flags(lt.torrent_flags.super_seeding)
            return info

        gt.Seeder.start = start_super  # type: ignore[method-assign]
    if super_seeding == "until-one-copy":
        status = gt.Seeder.status

        def status_then_normal(self: Any) -> Any:
            p = status(self)
            if p.uploaded >= self.info.total and self.h.flags() & lt.torrent_flags.super_seeding:
                self.h.unset_flags(lt.torrent_flags.super_seeding)  # one copy is out
            return p

        gt.Seeder.status = status_then_normal  # type: ignore[method-assign]
    sys.argv = ["grokfetch", *args]
    cli_main()


def run_fanout(work: Path, src: Path, torrent: Path, total: int, n: int, cap: str,
               cap_bytes: int, lever: str, timeout: float) -> dict[str, Any]:
    seed_args = (LEVERS[lever] or {}).get("_seed_args", [])
    seeder = spawn("seeder", grokfetch_cmd(
        lever, "seed", str(src), "--torrent", str(torrent), *LOOPBACK, "--max-upload-rate", cap,
        "--json-progress", "--full-check", *seed_args))
    leechers: list[Node] = []
    tracker = SwarmTracker() if (LEVERS[lever] or {}).get("_tracker") else None
    announce = ["--tracker", tracker.url] if tracker is not None else []
    try:
        if not seeder.started.wait(120) or seeder.port is None:
            raise SystemExit("seeder did not start")
        t0 = time.monotonic()
        for i in range(n):
            dest = work / f"node{i}"
            leechers.append(spawn(f"node{i}", grokfetch_cmd(
                lever, "get", str(torrent), "--dest", str(dest),
                "--peer", f"127.0.0.1:{seeder.port}", *LOOPBACK, "--max-download-rate", cap,
                "--max-upload-rate", cap, "--seed", "--json-progress", "--no-space-check",
                *announce,
            )))
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if all(x.done_at is not None for x in leechers):
                break
            dead = [x.name for x in leechers if x.proc.poll() is not None and x.done_at is None]
            if dead:
                raise SystemExit(f"{dead[0]} exited ({leechers[0].proc.returncode}) unfinished")
            time.sleep(0.2)
        time.sleep(1.2)  # one more status line from the seeder after the last node finished
        done = [x.done_at - t0 for x in leechers if x.done_at is not None]
        return {
            "n": n,
            "lever": lever,
            "finished": len(done),
            "all_done": max(done) if len(done) == n else None,
            "first": min(done) if done else None,
            "ideal": total / cap_bytes,
            "seeder_upload": seeder.last.get("uploaded", 0) / total,
        }
    finally:
        if tracker is not None:
            tracker.close()
        for x in [seeder, *leechers]:
            x.proc.terminate()
        for x in [seeder, *leechers]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                x.proc.wait(timeout=20)
            if x.proc.poll() is None:
                x.proc.kill()
        for i in range(n):
            shutil.rmtree(work / f"node{i}", ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_node":
        _node_with_lever(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="4,8,16", help="leecher counts, comma-separated")
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--cap", default="4M", help="per-node rate cap (binary units, like get's)")
    ap.add_argument("--levers", default="super-seed,default", help=", ".join(LEVERS))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per fan-out")
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()
    from grokfetch.cli.get import parse_rate

    cap_bytes = parse_rate(args.cap)
    levers = args.levers.split(",")
    for lv in levers:
        if lv not in LEVERS:
            raise SystemExit(f"unknown lever {lv!r}: choose from {', '.join(LEVERS)}")
    work = Path(tempfile.mkdtemp(prefix="grokfetch-bench-cluster-", dir=args.workdir))
    try:
        src = work / "src"
        total = write_data(src, args.size_mb, args.files)
        torrent = make_torrent(src, out=work / "bench.torrent")
        print(f"data: {args.files} files, {total / 1e6:.0f} MB; every node capped at "
              f"{args.cap}B/s = {cap_bytes / 1e6:.2f} MB/s; ideal broadcast "
              f"{total / cap_bytes:.1f} s; load average {os.getloadavg()[0]:.1f} at the start",
              flush=True)
        print(f"{'N':>3} {'lever':10} {'all done':>9} {'x ideal':>8} {'first':>7} "
              f"{'seeder up':>10} {'load':>5}", flush=True)
        for n in (int(x) for x in args.nodes.split(",")):
            for lv in levers:
                r = run_fanout(work, src, torrent, total, n, args.cap, cap_bytes, lv,
                               args.timeout)
                load = os.getloadavg()[0]  # the 1-minute average as the run ends
                if r["all_done"] is None:
                    print(f"{n:>3} {lv:10} {r['finished']}/{n} finished in {args.timeout:.0f} s",
                          flush=True)
                    continue
                print(f"{n:>3} {lv:10} {r['all_done']:8.1f}s {r['all_done'] / r['ideal']:7.2f}x "
                      f"{r['first']:6.1f}s {r['seeder_upload']:9.2f}x {load:5.1f}", flush=True)
        print("(x ideal: all-done time / (size / cap); seeder up: payload uploaded / size; "
              "targets for N=16: <= 1.3x ideal, <= 1.2x size)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("GROKFETCH_NO_PROGRESS", "1")
    main()
