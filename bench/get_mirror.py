"""Benchmark `grokfetch get --source mirror` against `hf download` and aria2c on one Hub stand-in.

    python bench/get_mirror.py [--size-mb 1024] [--files 8] [--rounds 3] [--workdir /tmp]
                               [--pieces]

A quick run (about a minute): ``--size-mb 256 --rounds 3``.

What it does, all on 127.0.0.1:

1. writes FILES random files (SIZE_MB in all) named like checkpoint tensors
   and a manifest naming them (sizes only: the mirror's SHA-256 proves them);
2. starts the loopback Hugging Face stand-in (tests/hub_standin.py): the Hub
   API and resolve URLs on one port, redirecting to a "CDN" port that serves
   Range requests with sendfile;
3. per round (the order rotates), times from process start to exit:
   * `grokfetch get --source mirror` (SHA-256 of every file while streaming,
     fsync, atomic rename, the pin included: its BLAKE3 digests are computed
     from the same stream, so no file is read again),
   * `hf download REPO --local-dir D` (huggingface_hub's CLI, HF_ENDPOINT at the
     stand-in, HF_HUB_DISABLE_XET=1: plain HTTP),
   * `aria2c -x8 -s8 -j8` with one `out=` per file (aria2c would otherwise name
     each file after the CDN URL's last component),
   * with ``--pieces``, also `grokfetch get MAGNET` with a dead swarm: the
     metadata from the stand-in's .torrent URL, every piece read from the
     mirror with Range requests and handed to libtorrent's add_piece (SHA-1
     checked), then the pin pass against the torrent;
   and checks the bytes of each;
4. prints MB/s (10^6 bytes/s) and the CPU seconds (user + system) each tool
   used, the medians of the rounds, the ratios, and the load average before
   and after (the machine is shared: compare figures from one run only).

Targets (issue 12): at least 1.2x `hf download` and at least 1.0x aria2c.

On loopback the run is CPU-bound, not network-bound: grokfetch hashes every
byte three times while it streams (SHA-256 against the mirror's published
value, BLAKE3 of the file and of each 64 MiB chunk for the pin) and fsyncs
each file (its writeback started as the bytes arrive); `hf download` and
aria2c hash nothing and do not fsync.  The stand-in's sendfile and the
kernel's loopback copies use the same two cores.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from hub_standin import HubStandin, repo_files  # noqa: E402

REPO_ID = "bench/grok-shaped"
PIECES = "grokfetch get MAGNET (add_piece)"


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["GROKFETCH_NO_PROGRESS"] = "1"
    e.update(extra)
    return e


def write_data(folder: Path, size_mb: int, files: int) -> list[tuple[str, int]]:
    ckpt = folder / "ckpt-0"
    ckpt.mkdir(parents=True)
    per = size_mb * 1_000_000 // files
    block = os.urandom(1 << 20)
    out = []
    for i in range(files):
        rel = f"ckpt-0/tensor{i:05d}_000"
        with open(folder / rel, "wb") as f:
            left = per
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
            f.write(os.urandom(64))  # no two files alike
        out.append((rel, per + 64))
    return out


def write_manifest(path: Path, files: list[tuple[str, int]], torrent_url: str | None = None,
                   info_hash: str | None = None) -> None:
    sources: dict[str, object] = {"mirrors": [{"kind": "huggingface", "repo": REPO_ID,
                                               "revision": "main", "folder": "ckpt-0"}]}
    if info_hash:
        sources.update(info_hash=info_hash, magnet=f"magnet:?xt=urn:btih:{info_hash}",
                       torrent_url=torrent_url, trackers=[], web_seeds=[])
    path.write_text(json.dumps({
        "format": "grokfetch-manifest", "format_version": 1, "name": "grok-shaped",
        "pinned": False, "sources": sources,
        "files": [{"path": rel, "size": size} for rel, size in files],
    }))


def same(a: Path, b: Path, files: list[tuple[str, int]]) -> bool:
    return all(filecmp.cmp(a / rel, b / rel, shallow=False) for rel, _ in files)


def timed(cmd: list[str], e: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    r = subprocess.run(cmd, env=e, capture_output=True, text=True)
    dt = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed ({r.returncode}): "
                 f"{r.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dt, cpu


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--pieces", action="store_true",
                    help="also time piece mode: a magnet, a dead swarm, add_piece from the mirror")
    args = ap.parse_args()
    hf = shutil.which("hf")
    aria = shutil.which("aria2c")
    if hf is None or aria is None:
        sys.exit("needs `hf` (pip install huggingface_hub) and aria2c (apt-get install aria2)")
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-", dir=args.workdir))
    try:
        src = work / "src"
        files = write_data(src, args.size_mb, args.files)
        total = sum(s for _, s in files)
        man = work / "manifest.json"
        write_manifest(man, files)
        torrent = btih = None
        if args.pieces:
            from grokfetch.format.metainfo import load_torrent, make_torrent

            tpath = make_torrent(src, piece_size=16 << 20, out=work / "bench.torrent")
            torrent, btih = tpath.read_bytes(), load_torrent(tpath)[1].info_hash
        print(f"before: {load()}", flush=True)
        with HubStandin(REPO_ID, repo_files(src), torrent=torrent, torrent_btih=btih) as hub:
            if args.pieces:
                write_manifest(man, files, torrent_url=hub.torrent_url, info_hash=btih)

            def run_grokfetch(dest: Path) -> tuple[float, float]:
                return timed([sys.executable, "-m", "grokfetch", "get", "--source", "mirror",
                              "--manifest", str(man), "--mirror", hub.endpoint,
                              "--dest", str(dest), "--quiet"], env())

            def run_pieces(dest: Path) -> tuple[float, float]:
                magnet = f"magnet:?xt=urn:btih:{btih}"
                return timed([sys.executable, "-m", "grokfetch", "get", magnet,
                              "--manifest", str(man), "--mirror", hub.endpoint,
                              "--dest", str(dest), "--quiet", "--listen", "127.0.0.1:0",
                              "--no-dht", "--no-utp"], env())

            def run_hf(dest: Path) -> tuple[float, float]:
                return timed([hf, "download", REPO_ID, "--local-dir", str(dest), "--quiet"],
                             env(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1",
                                 HF_HUB_DISABLE_TELEMETRY="1",
                                 HF_HOME=str(work / "hf-home")))

            def run_aria(dest: Path) -> tuple[float, float]:
                lst = work / "aria2.txt"
                lst.write_text("".join(
                    f"{hub.endpoint}/{REPO_ID}/resolve/main/{rel}\n out={rel}\n"
                    for rel, _ in files))
                return timed([aria, "-x8", "-s8", "-j8", "--input-file", str(lst),
                              "--dir", str(dest), "--quiet", "--file-allocation=none",
                              "--allow-overwrite=true", "--auto-file-renaming=false"], env())

            tools = {"grokfetch get --source mirror": run_grokfetch,
                     "hf download": run_hf, "aria2c -x8 -s8 -j8": run_aria}
            if args.pieces:
                tools[PIECES] = run_pieces
            times: dict[str, list[float]] = {k: [] for k in tools}
            cpus: dict[str, list[float]] = {k: [] for k in tools}
            names = list(tools)
            for rnd in range(args.rounds):
                order = names[rnd % len(names):] + names[: rnd % len(names)]
                for name in order:
                    dest = work / "dest"
                    shutil.rmtree(dest, ignore_errors=True)
                    shutil.rmtree(work / "hf-home", ignore_errors=True)
                    dt, cpu = tools[name](dest)
                    if not same(src, dest, files):
                        sys.exit(f"{name}: the downloaded bytes differ from the source")
                    times[name].append(dt)
                    cpus[name].append(cpu)
                    print(f"round {rnd + 1}: {name:32s} {dt:6.2f} s "
                          f"{total / dt / 1e6:7.1f} MB/s  CPU {cpu:5.2f} s", flush=True)
                    shutil.rmtree(dest, ignore_errors=True)
        print(f"after: {load()}")
        rate = {k: total / statistics.median(v) / 1e6 for k, v in times.items()}
        print(f"\n{total / 1e6:.0f} MB in {args.files} files, median of {args.rounds} rounds:")
        for k, v in rate.items():
            print(f"  {k:32s} {v:7.1f} MB/s  CPU {statistics.median(cpus[k]):5.2f} s")
        g = rate["grokfetch get --source mirror"]
        print(f"  ratio vs hf download: {g / rate['hf download']:.2f}x (target >= 1.2x)")
        print(f"  ratio vs aria2c -x8 -s8 -j8: {g / rate['aria2c -x8 -s8 -j8']:.2f}x "
              "(target >= 1.0x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
