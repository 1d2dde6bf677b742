"""bench/scan: how long the safe reader takes per file, and its peak memory.

Synthesizes a checkpoint (default: the 'small' preset, plus one sparse file of
each real Grok-1 size so the 1.6 GB / 3.2 GB framing is timed too, without
using the disk), scans every file, and prints time per file and peak RSS.
Anchor: ``pickletools.genops`` walking the same file (the stdlib's own opcode
walker, which reads every payload).

    python bench/scan.py [--preset small] [--repeat 5]
"""

from __future__ import annotations

import argparse
import pickletools
import resource
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from grokfetch.format.layout import GROK1, param_list
from grokfetch.format.pickle_reader import scan
from grokfetch.synth import synthesize, write_param


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="grokfetch-bench-scan-"))
    try:
        synthesize(tmp / "ck", args.preset)
        files = sorted((tmp / "ck" / "ckpt-0").iterdir())
        real = tmp / "real"
        real.mkdir()
        seen = set()
        for spec in param_list(GROK1):
            key = (spec.kind, tuple(a.shape for a in spec.arrays))
            if key in seen:
                continue
            seen.add(key)
            write_param(real / f"{spec.index:03d}-{spec.short.replace('/', '.')}", spec,
                        sparse=True)
        rss0 = peak_rss_mb()
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            for f in files:
                scan(f)
            times.append((time.perf_counter() - t) / len(files))
        print(f"{args.preset}: {len(files)} files, {sum(f.stat().st_size for f in files):,} "
              f"bytes: scan {statistics.median(times) * 1e6:.0f} us/file (median of "
              f"{args.repeat})")
        print("real Grok-1 file shapes (sparse files, framing only):")
        tracemalloc.start()
        for f in sorted(real.iterdir()):
            t = time.perf_counter()
            for _ in range(args.repeat):
                pf = scan(f)
            ours = (time.perf_counter() - t) / args.repeat
            print(f"  {f.name:45s} {pf.size:>15,} bytes  scan {ours * 1e6:8.0f} us")
        _cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  peak Python memory while scanning the real-size files: {peak / 1024:.0f} KiB")
        f = max(files, key=lambda p: p.stat().st_size)
        t = time.perf_counter()
        for _ in range(args.repeat):
            for _op in pickletools.genops(f.open("rb")):
                pass
        anchor = (time.perf_counter() - t) / args.repeat
        t = time.perf_counter()
        for _ in range(args.repeat):
            scan(f)
        ours = (time.perf_counter() - t) / args.repeat
        print(f"largest synthesized file {f.name} ({f.stat().st_size:,} bytes): "
              f"grokfetch scan {ours * 1e6:.0f} us vs pickletools.genops {anchor * 1e6:.0f} us "
              f"(ratio {anchor / ours:.1f}x faster)")
        print(f"peak RSS: {peak_rss_mb():.1f} MB (after synthesis {rss0:.1f} MB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
