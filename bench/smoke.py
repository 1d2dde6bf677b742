"""Benchmark: `grokfetch smoke --layer 0` on one full-size Grok-1 layer (real shapes).

Synthesizes a 1-layer checkpoint with the real dimensions (the embedding,
3.2 GB, plus one layer, 4.9 GB: about 8 GB on disk) unless --ckpt names one,
runs `grokfetch smoke CKPT --layer 0` on 8 tokens in a child process and
prints its wall time and peak RSS (the goal: under 3 GB), then deletes what
it synthesized.

    python bench/smoke.py [--dir /tmp/grokfetch-bench-smoke] [--ckpt PATH] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

LIMIT_BYTES = 3 * 1024**3
NEED_FREE = 10 * 1024**3  # 8 GB of files plus headroom


def run_measured(cmd: list[str]) -> tuple[int, float, int, str]:
    """(exit status, seconds, peak RSS in bytes, stdout) of one child process."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.monotonic() - start, usage.ru_maxrss * 1024, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/grokfetch-bench-smoke", type=Path)
    ap.add_argument("--ckpt", type=Path, help="use this checkpoint instead of synthesizing")
    ap.add_argument("--tokens", default="1,17,42,1000,5000,65537,100000,131071")
    ap.add_argument("--keep", action="store_true", help="keep the synthesized checkpoint")
    args = ap.parse_args()
    python = [sys.executable, "-m", "grokfetch"]
    ckpt = args.ckpt
    made = False
    if ckpt is None:
        ckpt = args.dir
        args.dir.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(args.dir.parent).free
        if free < NEED_FREE:
            print(
                f"need {NEED_FREE / 1e9:.0f} GB free in {args.dir.parent}, have "
                f"{free / 1e9:.1f} GB",
                file=sys.stderr,
            )
            return 5
        if not (ckpt / "grokfetch-manifest.json").is_file():
            t0 = time.monotonic()
            subprocess.run(
                [*python, "synth", str(ckpt), "--preset", "grok-1", "--layers", "1", "--quiet"],
                check=True,
            )
            print(f"synth: {time.monotonic() - t0:.1f} s for a 1-layer grok-1 checkpoint")
        made = not args.keep
    try:
        size = sum(p.stat().st_size for p in Path(ckpt).rglob("tensor*"))
        code, seconds, rss, out = run_measured(
            [*python, "smoke", str(ckpt), "--layer", "0", "--tokens", args.tokens]
        )
        print(out.rstrip())
        print(
            f"smoke --layer 0, {len(args.tokens.split(','))} tokens, checkpoint "
            f"{size / 1e9:.2f} GB: exit {code}, {seconds:.1f} s, peak RSS "
            f"{rss / 1024**3:.2f} GiB ({'under' if rss < LIMIT_BYTES else 'OVER'} the 3 GiB "
            f"goal)"
        )
        return 0 if code == 0 and rss < LIMIT_BYTES else 1
    finally:
        if made:
            shutil.rmtree(ckpt, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
