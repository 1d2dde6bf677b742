"""Benchmark `grokfetch get --source mirror` against `hf download` and aria2c on one Hub stand-in.

    python bench/get_mirror.py [--size-mb 1024] [--files 8] [--rounds 2] [--workdir /tmp]

What it does, all on 127.0.0.1:

1. writes FILES random files (SIZE_MB in all) named like checkpoint tensors
   and a manifest naming them (sizes only: the mirror's SHA-256 proves them);
2. starts the loopback Hugging Face stand-in (tests/hub_standin.py): the Hub
   API and resolve URLs on one port, redirecting to a "CDN" port that serves
   Range requests with sendfile;
3. per round (the order rotates), times from process start to exit:
   * `grokfetch get --source mirror` (SHA-256 of every file while streaming,
     atomic rename, the BLAKE3 pin pass included),
   * `hf download REPO --local-dir D` (huggingface_hub's CLI, HF_ENDPOINT at the
     stand-in, HF_HUB_DISABLE_XET=1: plain HTTP),
   * `aria2c -x8 -s8 -j8` with one `out=` per file (aria2c would otherwise name
     each file after the CDN URL's last component),
   and checks the bytes of each;
4. prints MB/s (10^6 bytes/s), the median of the rounds, and the ratios.

Targets (issue 12): at least 1.2x `hf download` and at least 1.0x aria2c.

On loopback the run is CPU-bound, not network-bound: grokfetch hashes every
byte three times (SHA-256 against the mirror's published value while it
streams, then BLAKE3 of the file and of each 64 MiB chunk for the pin) and
fsyncs each file; `hf download` and aria2c hash nothing.  On a 2-core machine
that costs more than the transfer itself; on a real link (100-300 MB/s from
the CDN) the hashing keeps up and the network decides.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
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


def write_manifest(path: Path, files: list[tuple[str, int]]) -> None:
    path.write_text(json.dumps({
        "format": "grokfetch-manifest", "format_version": 1, "name": "grok-shaped",
        "pinned": False,
        "sources": {"mirrors": [{"kind": "huggingface", "repo": REPO_ID, "revision": "main",
                                 "folder": "ckpt-0"}]},
        "files": [{"path": rel, "size": size} for rel, size in files],
    }))


def same(a: Path, b: Path, files: list[tuple[str, int]]) -> bool:
    return all(filecmp.cmp(a / rel, b / rel, shallow=False) for rel, _ in files)


def timed(cmd: list[str], e: dict[str, str]) -> float:
    t = time.monotonic()
    r = subprocess.run(cmd, env=e, capture_output=True, text=True)
    dt = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed ({r.returncode}): "
                 f"{r.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
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
        with HubStandin(REPO_ID, repo_files(src)) as hub:
            def run_grokfetch(dest: Path) -> float:
                return timed([sys.executable, "-m", "grokfetch", "get", "--source", "mirror",
                              "--manifest", str(man), "--mirror", hub.endpoint,
                              "--dest", str(dest), "--quiet"], env())

            def run_hf(dest: Path) -> float:
                return timed([hf, "download", REPO_ID, "--local-dir", str(dest), "--quiet"],
                             env(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1",
                                 HF_HUB_DISABLE_TELEMETRY="1",
                                 HF_HOME=str(work / "hf-home")))

            def run_aria(dest: Path) -> float:
                lst = work / "aria2.txt"
                lst.write_text("".join(
                    f"{hub.endpoint}/{REPO_ID}/resolve/main/{rel}\n out={rel}\n"
                    for rel, _ in files))
                return timed([aria, "-x8", "-s8", "-j8", "--input-file", str(lst),
                              "--dir", str(dest), "--quiet", "--file-allocation=none",
                              "--allow-overwrite=true", "--auto-file-renaming=false"], env())

            tools = {"grokfetch get --source mirror": run_grokfetch,
                     "hf download": run_hf, "aria2c -x8 -s8 -j8": run_aria}
            times: dict[str, list[float]] = {k: [] for k in tools}
            names = list(tools)
            for rnd in range(args.rounds):
                order = names[rnd % len(names):] + names[: rnd % len(names)]
                for name in order:
                    dest = work / "dest"
                    shutil.rmtree(dest, ignore_errors=True)
                    shutil.rmtree(work / "hf-home", ignore_errors=True)
                    dt = tools[name](dest)
                    if not same(src, dest, files):
                        sys.exit(f"{name}: the downloaded bytes differ from the source")
                    times[name].append(dt)
                    print(f"round {rnd + 1}: {name:32s} {dt:6.2f} s "
                          f"{total / dt / 1e6:7.1f} MB/s", flush=True)
                    shutil.rmtree(dest, ignore_errors=True)
        rate = {k: total / statistics.median(v) / 1e6 for k, v in times.items()}
        print(f"\n{total / 1e6:.0f} MB in {args.files} files, median of {args.rounds} rounds:")
        for k, v in rate.items():
            print(f"  {k:32s} {v:7.1f} MB/s")
        g = rate["grokfetch get --source mirror"]
        print(f"  ratio vs hf download: {g / rate['hf download']:.2f}x (target >= 1.2x)")
        print(f"  ratio vs aria2c -x8 -s8 -j8: {g / rate['aria2c -x8 -s8 -j8']:.2f}x "
              "(target >= 1.0x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
