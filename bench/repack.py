"""Benchmark ``grokfetch repack`` on full-size tensors of the real Grok-1 shapes.

    python bench/repack.py [--workdir /tmp/grokfetch-bench-repack] [--jobs 2] [--rounds 3]
                           [--small] [--keep-data] [--reuse]

Synthesizes a one-layer checkpoint with the real dimensions (~8.1 GB: the
3.2 GB embedding, three 1.6 GB MoE tensors, attention, norms, router; with
``--small`` ~1.7 GB: 16,384 embedding rows and 2 experts, so the MoE files are
400 MB and a run takes a minute or two), then in one run measures:

* ``repack --dtype keep`` against ``cp -r`` of the same source (ratio; the
  target is <= 1.1x cp + sync), in interleaved rounds because a shared virtual
  disk's speed swings by 2-3x from minute to minute.  Repack fsyncs every output,
  cp does not, so cp is also timed with a trailing ``sync``.  Twice: from the
  pinned source (its BLAKE3 values come from the pin) and from the same files
  unpinned (the pin moved aside, as for a copy or a mirror download: every
  source byte is hashed too, from the bytes the copy reads); and the unpinned run
  once more with ``--chunk-hashes`` (a second BLAKE3 of every output byte, the
  64 MiB chunk list that locates damage), which shows what those cost;
* the raw limits beside them, in the same rounds: ``dd`` reading every source
  file (the page cache's read speed: the source is hot) and the writes alone,
  the same outputs written and fsynced without any BLAKE3 (in-process), with
  the CPU seconds each repack used (``/usr/bin/time``: 2 cores = 2 s per s);
* repack's peak RSS under ``/usr/bin/time -v`` (target < 300 MB);
* bf16 dequantization GB/s on one 1.6 GB MoE tensor (per-tensor layout) and
  the sglang path (dequantize + transpose + split per expert);
* zstd at the default level on the same tensor: ratio and GB/s.

Synthetic weights are uniform random int8, which zstd cannot shrink much;
the real weights are not uniform, so their ratio will differ.  Everything is
written under --workdir and deleted at the end (unless --keep-data; ``--reuse`` takes
the source a --keep-data run left there instead of synthesizing it again).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from grokfetch.format import sglang  # noqa: E402
from grokfetch.format.arrays import BFLOAT16  # noqa: E402
from grokfetch.format.layout import GROK1, param_list  # noqa: E402
from grokfetch.format.manifest import MANIFEST_NAME  # noqa: E402
from grokfetch.format.pickle_reader import scan  # noqa: E402
from grokfetch.format.safetensors import Tensor, write_safetensors  # noqa: E402
from grokfetch.synth import synthesize  # noqa: E402

NEED_BYTES = 30 * 10**9  # source 8.1 + cp 8.1 + repack 8.1 + one 3.2 GB bf16 file, with margin


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Run a command, return its wall time in seconds (raises on failure)."""
    t = time.monotonic()
    subprocess.run(cmd, check=True, env=env)
    return time.monotonic() - t


def sync() -> float:
    t = time.monotonic()
    os.sync()
    return time.monotonic() - t


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def timed_write(path: Path, tensors: list[Tensor], level: int | None = None) -> tuple[float, int]:
    """(seconds including fsync, bytes on disk) of one write_safetensors call."""
    t = time.monotonic()
    res = write_safetensors(path, tensors, {"bench": "1"}, compress_level=level)
    return time.monotonic() - t, res.size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/grokfetch-bench-repack")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved cp / repack rounds")
    ap.add_argument("--keep-data", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="use the source a --keep-data run left in --workdir")
    ap.add_argument("--small", action="store_true",
                    help="a ~1.7 GB source (16,384 embedding rows, 2 experts): a few minutes")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    need = NEED_BYTES // 4 if args.small else NEED_BYTES
    if free < need:
        print(f"need {need / 1e9:.0f} GB free in {work}, have {free / 1e9:.1f} GB")
        return 2
    # the pin key of this run: never the user's own (the source's pin is scratch)
    os.environ["GROKFETCH_CONFIG_DIR"] = str(work / "config")
    env = dict(os.environ, GROKFETCH_NO_PROGRESS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    src = work / "src"
    try:
        print(f"load average at the start: {_load()}")
        t = time.monotonic()
        if args.reuse and (src / MANIFEST_NAME).is_file():
            print(f"reusing the checkpoint an earlier --keep-data run left in {src}")
        else:
            print(f"synthesizing a 1-layer checkpoint with the real Grok-1 shapes in {src} "
                  f"{'(--small: 16,384 embedding rows, 2 experts) ' if args.small else ''}...")
            shutil.rmtree(src, ignore_errors=True)
            synthesize(src, config=_one_layer(args.small), name="bench-repack")
        t = time.monotonic() - t
        total = dir_size(src / "ckpt-0")
        print(f"  {total / 1e9:.2f} GB in {t:.0f} s")
        sync()

        # -- keep vs cp, interleaved: the disk is shared and its speed varies a lot ----
        cp_times, rp_times, un_times, ch_times, pch_times, rss = [], [], [], [], [], []
        dd_times, bare_times, cpu_rp, cpu_un, cpu_ch, cpu_pch = [], [], [], [], [], []
        pin_file = src / MANIFEST_NAME
        aside = work / "pin-aside.json"
        out = work / "keep"
        timev = work / "time-v.txt"
        for r in range(args.rounds):
            dd_times.append(_dd_read(src / "ckpt-0"))
            bare_times.append(_bare_writes(src, work / "bare"))
            cp_dest = work / "cp"
            t_cp = run(["cp", "-r", str(src / "ckpt-0"), str(cp_dest)])
            cp_times.append((t_cp, t_cp + sync()))
            shutil.rmtree(cp_dest)
            sync()
            t_rp = run(["/usr/bin/time", "-v", "-o", str(timev), sys.executable, "-m",
                        "grokfetch", "repack", str(src), str(out), "--dtype", "keep",
                        "-j", str(args.jobs), "-q"], env)
            rp_times.append((t_rp, t_rp + sync()))
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timev.read_text())
            rss.append(int(m.group(1)) / 1024 if m else float("nan"))
            cpu_rp.append(_cpu_seconds(timev))
            out_size = dir_size(out)
            shutil.rmtree(out)
            sync()
            t_pch = run(["/usr/bin/time", "-v", "-o", str(timev), sys.executable, "-m",
                         "grokfetch", "repack", str(src), str(out), "--dtype", "keep",
                         "-j", str(args.jobs), "-q", "--chunk-hashes"], env)
            pch_times.append((t_pch, t_pch + sync()))
            cpu_pch.append(_cpu_seconds(timev))
            shutil.rmtree(out)
            sync()
            os.replace(pin_file, aside)  # unpinned: the same files, nothing vouches for them
            try:
                for flags, times, cpus in (([], un_times, cpu_un),
                                           (["--chunk-hashes"], ch_times, cpu_ch)):
                    t_un = run(["/usr/bin/time", "-v", "-o", str(timev), sys.executable, "-m",
                                "grokfetch", "repack", str(src), str(out), "--dtype", "keep",
                                "-j", str(args.jobs), "-q", *flags], env)
                    times.append((t_un, t_un + sync()))
                    cpus.append(_cpu_seconds(timev))
                    shutil.rmtree(out)
                    sync()
            finally:
                os.replace(aside, pin_file)
            print(f"  round {r + 1}: dd read {dd_times[-1]:.2f} s, writes alone "
                  f"{bare_times[-1]:.2f} s, cp -r {t_cp:.2f} s (+sync {cp_times[-1][1]:.2f} s), "
                  f"repack {t_rp:.2f} s (+sync {rp_times[-1][1]:.2f}), --chunk-hashes "
                  f"{t_pch:.2f} s (+sync {pch_times[-1][1]:.2f}), unpinned "
                  f"{un_times[-1][0]:.2f} s (+sync {un_times[-1][1]:.2f}), unpinned --chunk-hashes "
                  f"{ch_times[-1][0]:.2f} s (+sync {ch_times[-1][1]:.2f}), peak RSS "
                  f"{rss[-1]:.0f} MB; load {_load()}")
        t_cp, t_cp_sync = (statistics.median(x) for x in zip(*cp_times, strict=True))
        t_rp, t_rp_sync = (statistics.median(x) for x in zip(*rp_times, strict=True))
        t_un, t_un_sync = (statistics.median(x) for x in zip(*un_times, strict=True))
        t_ch, t_ch_sync = (statistics.median(x) for x in zip(*ch_times, strict=True))
        t_pch, t_pch_sync = (statistics.median(x) for x in zip(*pch_times, strict=True))
        best = min(x[0] for x in rp_times) / min(x[0] for x in cp_times)
        rss_mb = max(rss)

        # -- bf16 dequantization and zstd on one 1.6 GB MoE tensor --------------------
        spec = next(p for p in param_list(_one_layer(args.small))
                    if p.module.endswith("moe/linear"))
        pf = scan(src / spec.file)
        w, s = pf.arrays["weight"], pf.arrays["scales"]
        sync()
        t_bf, size_bf = timed_write(work / "bf16.safetensors", [Tensor("weight", w, BFLOAT16, s)])
        os.unlink(work / "bf16.safetensors")
        t_sg, size_sg = timed_write(work / "sglang.safetensors",
                                    sglang.tensors_for(spec, pf, BFLOAT16))
        os.unlink(work / "sglang.safetensors")
        t_z, size_z = timed_write(work / "keep.safetensors.zst",
                                  [Tensor("weight", w), Tensor("scales", s)], level=3)
        os.unlink(work / "keep.safetensors.zst")
        payload = w.nbytes + s.nbytes
        z_ratio_gauss, z_rate_gauss = _zstd_on_gaussian_int8()

        print()
        print(f"source: {total / 1e9:.2f} GB in {len(list((src / 'ckpt-0').iterdir()))} files "
              f"(1 layer, real shapes), jobs={args.jobs}")
        print(f"medians of {args.rounds} interleaved rounds (load average at the end: "
              f"{_load()}):")
        t_dd, t_bare = statistics.median(dd_times), statistics.median(bare_times)
        print(f"limit: dd read (hot):  {t_dd:6.2f} s  ({total / t_dd / 1e9:.2f} GB/s)")
        print(f"limit: the writes alone (copy + fsync, no BLAKE3, in-process): {t_bare:6.2f} s"
              f"  ({t_bare / t_cp_sync:.2f}x cp + sync)")
        print(f"cp -r:                 {t_cp:6.2f} s  ({total / t_cp / 1e9:.2f} GB/s)")
        print(f"cp -r + sync:          {t_cp_sync:6.2f} s  ({total / t_cp_sync / 1e9:.2f} GB/s)")
        print(f"repack --dtype keep:   {t_rp:6.2f} s  ({total / t_rp / 1e9:.2f} GB/s; "
              f"fsyncs every file; {out_size / 1e9:.2f} GB out)")
        print(f"ratio repack / cp:        {t_rp / t_cp:.2f}x   (target <= 1.2x)")
        print(f"ratio repack / (cp+sync): {t_rp_sync / t_cp_sync:.2f}x   (target <= 1.1x)")
        print(f"repack, source unpinned: {t_un:6.2f} s  (+sync {t_un_sync:.2f} s; hashes every "
              "source byte too, from the copy)")
        print(f"ratio unpinned / (cp+sync): {t_un_sync / t_cp_sync:.2f}x   (target <= 1.1x); "
              f"unpinned / pinned {t_un_sync / t_rp_sync:.2f}x")
        print(f"with the output's 64 MiB chunk hashes too (--chunk-hashes, as every repack "
              f"did before they became opt-in): pinned {t_pch:.2f} s (+sync {t_pch_sync:.2f} s; "
              f"{t_pch_sync / t_cp_sync:.2f}x cp + sync), unpinned {t_ch:.2f} s "
              f"(+sync {t_ch_sync:.2f} s; {t_ch_sync / t_cp_sync:.2f}x)")
        print(f"CPU seconds (user + sys, median): repack pinned {statistics.median(cpu_rp):.1f}, "
              f"unpinned {statistics.median(cpu_un):.1f}, for {t_rp:.1f} and {t_un:.1f} s of "
              f"wall time on 2 cores; --chunk-hashes pinned {statistics.median(cpu_pch):.1f}, "
              f"unpinned {statistics.median(cpu_ch):.1f}")
        print(f"ratio best repack / best cp: {best:.2f}x")
        print(f"peak RSS (repack, /usr/bin/time -v, worst round): {rss_mb:.0f} MB   "
              "(target < 300 MB)")
        print(f"bf16 dequantization ({spec.module}, 1.61 GB int8 -> "
              f"{size_bf / 1e9:.2f} GB bf16): {t_bf:.2f} s = {w.nbytes / t_bf / 1e9:.2f} GB/s "
              f"int8 in, {size_bf / t_bf / 1e9:.2f} GB/s bf16 out")
        print(f"sglang (dequantize + transpose, 8 experts): {t_sg:.2f} s = "
              f"{w.nbytes / t_sg / 1e9:.2f} GB/s int8 in, {size_sg / t_sg / 1e9:.2f} GB/s out")
        print(f"zstd level 3 (keep, {payload / 1e9:.2f} GB): ratio {payload / size_z:.3f}, "
              f"{t_z:.2f} s = {payload / t_z / 1e9:.2f} GB/s")
        print(f"zstd level 3 on 256 MB of Gaussian int8 (sigma 127/4, like absmax-quantized "
              f"weights; an estimate for real weights): ratio {z_ratio_gauss:.3f}, "
              f"{z_rate_gauss / 1e9:.2f} GB/s")
        return 0
    finally:
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)


def _zstd_on_gaussian_int8(nbytes: int = 256 << 20) -> tuple[float, float]:
    """(ratio, bytes/s) of zstd level 3 (all cores) on int8 values shaped like real weights.

    Synthetic checkpoints hold uniform int8, which no compressor can shrink;
    quantized weights are bell-shaped, about 7 bits of entropy per byte.
    """
    import numpy as np
    import zstandard

    rng = np.random.default_rng(0)
    data = np.clip(np.rint(rng.standard_normal(nbytes, dtype=np.float32) * 127 / 4), -127, 127)
    raw = data.astype(np.int8).tobytes()
    del data
    t = time.monotonic()
    packed = zstandard.ZstdCompressor(level=3, threads=-1).compress(raw)
    dt = time.monotonic() - t
    return len(raw) / len(packed), len(raw) / dt


def _one_layer(small: bool = False):
    from dataclasses import replace

    if small:  # real widths, a smaller vocabulary and 2 experts: 400 MB MoE files
        return replace(GROK1, num_layers=1, vocab_size=16384, num_experts=2)
    return replace(GROK1, num_layers=1)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_seconds(timev: Path) -> float:
    """User + system seconds from a ``/usr/bin/time -v`` report."""
    text = timev.read_text()
    return sum(float(m.group(1)) for m in re.finditer(
        r"(?:User|System) time \(seconds\): ([\d.]+)", text))


def _dd_read(folder: Path) -> float:
    """Seconds for dd to read every file of ``folder`` (to /dev/null, 8 MiB blocks)."""
    t = time.monotonic()
    for f in sorted(folder.iterdir()):
        subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=8M", "status=none"], check=True)
    return time.monotonic() - t


def _bare_writes(src: Path, dest: Path) -> float:
    """Seconds to write the repack's per-tensor outputs of ``src`` with the hashing of the
    written bytes switched off (the streaming writer's copy + fsync alone), plus a sync."""
    from unittest import mock

    from grokfetch.format import safetensors as st
    from grokfetch.format.checkpoint import open_checkpoint

    ckpt = open_checkpoint(src)
    jobs = []
    for spec in ckpt.params:
        pf = scan(ckpt.path_of(spec))
        jobs.append([Tensor(name, a) for name, a in pf.arrays.items()])
    dest.mkdir()
    t = time.monotonic()
    with mock.patch.object(st.StreamDigest, "update_whole", lambda self, d: None), \
            mock.patch.object(st.StreamDigest, "update_chunks", lambda self, d: None):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda ij: write_safetensors(dest / f"{ij[0]}.safetensors", ij[1]),
                          enumerate(jobs)))
    os.sync()
    dt = time.monotonic() - t
    shutil.rmtree(dest)
    os.sync()
    return dt


if __name__ == "__main__":
    sys.exit(main())
