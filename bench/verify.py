"""Benchmark: ``grokfetch verify`` against ``b3sum``, and the pin pass against ``verify --torrent``.

Builds a file set in /tmp shaped like the real checkpoint, scaled down (three
1.6 GB MoE-sized files and a spread of the smaller sizes the real checkpoint
has, 5.0 GB in all; ``--small``: one of the 1.6 GB files, 1.8 GB), then times,
in interleaved rounds (the median of each; a burst of other load hits all the
tools alike):

hot (page cache warm):

* ``b3sum --check`` (Debian package b3sum): the anchor of a plain verify;
* ``grokfetch verify`` as the CLI (the whole process: start-up, imports, the pin's
  check, hashing) and in-process (the library call: the hashing engine alone);
* ``grokfetch verify --torrent`` (the CLI): SHA-1 of 16 MiB pieces across file
  boundaries, the anchor of the pin pass;
* the pin pass ``pin(torrent=...)`` in a fresh process (what ``get`` and ``verify
  --torrent --pin`` run once): every piece's SHA-1 and every file's BLAKE3 from the
  same read (target: at most 1.3x ``verify --torrent`` alone);
* ``sha256sum --check`` with ``--sha256sum`` (slow: 0.3 GB/s);
* the floor beside them: BLAKE3's CPU per byte over a buffer in memory, spread
  over every core, and the CLI's start-up alone; their sum is the best any
  BLAKE3 verify with that start-up can reach, printed against b3sum's time.

cold (every file dropped from the page cache with posix_fadvise(DONTNEED) before
each run, which an unprivileged user may do to files it can read; nobody else's
cache is touched, unlike /proc/sys/vm/drop_caches):

* ``dd bs=16M`` of every file in turn: the disk's raw sequential read;
* ``b3sum --check``, the CLI verify, ``verify --torrent`` and the pin pass.

It prints seconds, GB/s, CPU seconds (user + sys), each against b3sum, peak RSS
(b3sum maps whole files, so its RSS shows them; target for ours: under 200 MB), the
ratios the targets are stated in, and the load average before and after.  The
Python processes run with compiled bytecode in a scratch cache (as an installed
package does: pip compiles it at install), not recompiling every module per run.

Then ``verify --changed-only`` on a tree of 770 small files (the real
checkpoint's file count): the re-check of an unchanged tree, in-process and as
the CLI, beside a full verify of the same tree (target: under 50 ms in-process;
the CLI adds Python's start-up).  ``--only changed-only`` runs just that part.
The data is deleted afterwards (``--keep`` keeps it, and a later run with the
same ``--dir`` reuses it); the pin key goes to a scratch config folder beside it.

    python bench/verify.py [--small] [--repeat 3] [--no-cold] [--sha256sum]
                           [--dir /tmp/grokfetch-bench-verify] [--keep]
                           [--only changed-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from grokfetch.format.manifest import FileEntry, Manifest  # noqa: E402
from grokfetch.format.metainfo import build_torrent  # noqa: E402
from grokfetch.integrity.verify import pin, verify  # noqa: E402

# (count, bytes each): the real checkpoint's sizes (docs/FORMAT.md, "The files"), fewer of each.
SHAPE = [
    (3, 1_611_137_347),  # MoE linear / linear_v
    (2, 37_847_359),  # attention output
    (2, 37_761_334),  # attention query
    (8, 6_293_814),  # key / value
    (16, 196_770),  # router
    (64, 24_727),  # RMSNorm scales
]
SMALL_SHAPE = [(1, 1_611_137_347), *SHAPE[1:]]


def make_files(root: Path, shape: list[tuple[int, int]]) -> list[Path]:
    """Random-content files named like checkpoint tensors (content never parsed); files
    already there with the right sizes (a ``--keep`` run) are reused."""
    import numpy as np

    rng = np.random.default_rng(0)
    ckpt = root / "ckpt-0"
    ckpt.mkdir(parents=True, exist_ok=True)
    paths = []
    i = 0
    for count, size in shape:
        for _ in range(count):
            p = ckpt / f"tensor{i:05d}_000"
            if not (p.is_file() and p.stat().st_size == size):
                with open(p, "wb") as f:
                    left = size
                    while left:
                        n = min(left, 64 << 20)
                        f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
                        left -= n
                    os.fsync(f.fileno())  # dirty pages cannot be dropped for the cold runs
            paths.append(p)
            i += 1
    for extra in sorted(set(ckpt.iterdir()) - set(paths)):  # from a run of another shape
        extra.unlink()
    return paths


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (theirs only): the next read is cold."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_mb(paths: list[Path]) -> float | None:
    """MB of the files in the page cache (util-linux fincore), None without it."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                          *map(str, paths)], capture_output=True, text=True)
    try:
        return sum(int(x) for x in out.stdout.split()) / 1e6
    except ValueError:
        return None


# one measurement: (wall seconds, CPU seconds, peak RSS in KB; 0 when not measured)
Run = tuple[float, float, int]


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Wall seconds, CPU seconds (user + sys) and peak RSS (KB) of one command; stdout
    discarded, failure raises.

    They come from GNU time: a child forked from this (large) Python process would
    inherit its high-water mark across exec.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "TIMED %U %S %M", *cmd], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-500:]}")
    user, system, rss = proc.stderr.rsplit("TIMED ", 1)[1].split()[:3]
    return dt, float(user) + float(system), int(rss)


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def bench_rounds(tools: list[tuple[str, Callable[[], Run]]], repeat: int,
                 before: Callable[[], None] | None = None) -> dict[str, list[Run]]:
    """``repeat`` rounds, each running every tool once in turn (``before`` each run)."""
    runs: dict[str, list[Run]] = {name: [] for name, _ in tools}
    for _ in range(repeat):
        for name, fn in tools:
            if before is not None:
                before()
            runs[name].append(fn())
    return runs


def print_table(title: str, runs: dict[str, list[Run]], total: int, ref: str) -> dict[str, float]:
    """The median of each tool's rounds, against ``ref``'s; returns the medians."""
    med = {n: statistics.median(r[0] for r in rs) for n, rs in runs.items()}
    cpu = {n: statistics.median(r[1] for r in rs) for n, rs in runs.items()}
    print(f"\n{title}")
    print(f"{'tool':36s} {'seconds':>8s} {'GB/s':>6s} {'vs ' + ref.split()[0]:>9s} "
          f"{'CPU s':>6s} {'peak RSS':>9s}  rounds")
    for name, rs in runs.items():
        rss = max(r[2] for r in rs)
        mem = f"{rss / 1024:.0f} MB" if rss else "-"
        used = f"{cpu[name]:6.2f}" if cpu[name] else f"{'-':>6s}"
        each = ", ".join(f"{r[0]:.2f}" for r in rs)
        print(f"{name:36s} {med[name]:8.3f} {total / med[name] / 1e9:6.2f} "
              f"{med[ref] / med[name]:8.2f}x {used} {mem:>9s}  {each}")
    return med


def blake3_cpu_per_byte(rounds: int = 3) -> float:
    """CPU seconds per byte of BLAKE3 over a buffer already in memory, on one thread (the
    least of ``rounds``): the hash's own floor here, with no reading, mapping or faults."""
    import blake3

    data = memoryview(os.urandom(256 << 20))
    best = float("inf")
    for _ in range(rounds):
        c0 = time.thread_time()
        blake3.blake3(data, max_threads=1).digest()
        best = min(best, time.thread_time() - c0)
    return best / len(data)


def print_floor(total: int, b3sum_s: float, cli_s: float, start_up_s: float) -> None:
    """What bounds a BLAKE3 verify against b3sum hot: the hash's CPU floor spread over every
    core, and the CLI's start-up, which runs on one core before any byte is hashed."""
    cores = os.cpu_count() or 1
    per_byte = blake3_cpu_per_byte()
    floor = total * per_byte / cores
    print(f"\nthe floor: BLAKE3 in memory costs {per_byte * 1e9:.3f} CPU s per GB here (one "
          f"thread, best of 3); {total / 1e9:.2f} GB on {cores} cores is at least "
          f"{floor:.3f} s of hashing alone")
    print(f"  b3sum --check took {b3sum_s:.3f} s: {floor / b3sum_s:.0%} of it is that floor")
    print(f"  the CLI took {cli_s:.3f} s; its start-up alone (`verify --help`, Python and the "
          f"imports) {start_up_s:.3f} s, before any byte is hashed")
    print(f"  best any BLAKE3 verify with this start-up can do: start-up + floor = "
          f"{start_up_s + floor:.3f} s, {b3sum_s / (start_up_s + floor):.2f}x b3sum's speed")


def compiled_env(scratch: Path) -> dict[str, str]:
    """The environment of every timed Python process: bytecode compiled once into a
    scratch cache, as an installed package has it.  Without this (PYTHONDONTWRITEBYTECODE,
    a source tree) every run recompiles every module it imports (~50-100 ms), which no
    installed grokfetch pays."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    return env


FILE_COUNT = 770  # the real checkpoint's


def bench_changed_only(root: Path, repeat: int, env: dict[str, str]) -> None:
    """A cached re-check of a 770-file tree against a full verify of it (``env``: that of
    the timed CLI processes, see ``compiled_env``)."""
    from grokfetch.integrity.verified_record import RACY_NS

    ckpt = root / "ckpt-0"
    ckpt.mkdir(parents=True)
    entries = []
    for i in range(FILE_COUNT):
        rel = f"ckpt-0/tensor{i:05d}_000"
        (root / rel).write_bytes(os.urandom(4096))
        entries.append(FileEntry(path=rel, size=4096))
    pin(root, base=Manifest(name="bench-770", files=entries), first_use=True)
    time.sleep(RACY_NS / 1e9 + 0.1)  # files written just now are not recorded (racy)
    # records every file the pin pass could not (those it stat'ed too soon after writing)
    first = verify(root, changed_only=True, accept_first_use=True)
    assert first.ok, first.summary
    cli = [sys.executable, "-m", "grokfetch", "verify", str(root), "--quiet",
           "--changed-only", "--accept-unchanged", "--accept-first-use"]

    # (wall, CPU) seconds: on a loaded machine the wall time includes waiting for a core
    def cached() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        r = verify(root, changed_only=True, accept_unchanged=True, accept_first_use=True)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert r.proven and r.summary["UNCHANGED"] == FILE_COUNT and r.bytes_hashed == 0
        return dt, cpu

    def full() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        r = verify(root, accept_first_use=True)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert r.proven and r.summary["OK"] == FILE_COUNT
        return dt, cpu

    def cli_run() -> tuple[float, float]:
        return timed(cli, REPO, env)[0], 0.0

    def start_up() -> tuple[float, float]:  # Python and the CLI's imports, nothing verified
        return timed([sys.executable, "-m", "grokfetch", "verify", "--help"], REPO, env)[0], 0.0

    tools = [
        ("verify (library), full", full),
        ("verify --changed-only (library)", cached),
        ("verify --changed-only (CLI)", cli_run),
        ("start-up alone (verify --help)", start_up),
    ]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in tools}
    for _ in range(repeat):
        for name, fn in tools:
            runs[name].append(fn())
    print(f"\n{FILE_COUNT} files of 4 KiB, every one unchanged since a full verify")
    print(f"{'tool':34s} {'ms':>8s} {'CPU ms':>8s} {'vs full':>9s}")
    ref = statistics.median(r[0] for r in runs[tools[0][0]])
    for name, _ in tools:
        secs = statistics.median(r[0] for r in runs[name])
        cpu = statistics.median(r[1] for r in runs[name])
        used = f"{cpu * 1e3:8.1f}" if cpu else f"{'-':>8s}"
        print(f"{name:34s} {secs * 1e3:8.1f} {used} {ref / secs:8.2f}x")
    print(f"(medians of {repeat} interleaved rounds; target for the library call: under 50 ms;"
          f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/grokfetch-bench-verify")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--small", action="store_true", help="1.8 GB instead of 5.0 GB")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache rows")
    ap.add_argument("--sha256sum", action="store_true", help="add sha256sum --check (slow)")
    ap.add_argument("--keep", action="store_true", help="keep the data afterwards")
    ap.add_argument("--only", choices=["changed-only"], help="run only this part")
    args = ap.parse_args()
    root = Path(args.dir)
    scratch = root.parent / (root.name + "-scratch")  # pin key, bytecode, torrent, sums
    # the pin key of this run: never the user's own (pins made here are scratch)
    os.environ["GROKFETCH_CONFIG_DIR"] = str(scratch / "config")
    tree = root.parent / (root.name + "-770")
    if args.only == "changed-only":
        try:
            bench_changed_only(tree, args.repeat, compiled_env(scratch))
        finally:
            if not args.keep:
                shutil.rmtree(tree, ignore_errors=True)
                shutil.rmtree(scratch, ignore_errors=True)
        return
    for tool in ("b3sum", "dd", "/usr/bin/time", *(["sha256sum"] if args.sha256sum else [])):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install {tool})")
    print(f"before: {load_text()}", flush=True)
    try:
        print(f"writing the file set under {root} ...", flush=True)
        scratch.mkdir(parents=True, exist_ok=True)
        paths = make_files(root, SMALL_SHAPE if args.small else SHAPE)
        total = sum(p.stat().st_size for p in paths)
        rels = [p.relative_to(root).as_posix() for p in paths]
        print(f"{len(paths)} files, {total / 1e9:.2f} GB", flush=True)

        base = Manifest(name="bench", files=[FileEntry(path=r, size=p.stat().st_size)
                                             for r, p in zip(rels, paths, strict=True)])
        # a v1 torrent of the same files, 16 MiB pieces (pieces span file boundaries)
        torrent = scratch / "bench.torrent"
        torrent.write_bytes(build_torrent(root, piece_size=16 << 20))
        # writes the manifest verify checks (proven by the torrent), warms the page cache
        pin(root, base=base, torrent=torrent)
        sums = scratch / "sums.b3"
        sums.write_bytes(subprocess.run(["b3sum", *rels], cwd=root, check=True,
                                        capture_output=True).stdout)
        sha_sums = scratch / "sums.sha256"
        if args.sha256sum:
            sha_sums.write_bytes(subprocess.run(["sha256sum", *rels], cwd=root, check=True,
                                                capture_output=True).stdout)

        env = compiled_env(scratch)
        py = sys.executable
        cli = [py, "-m", "grokfetch", "verify", str(root), "--quiet"]
        cli_torrent = [*cli, "--torrent", str(torrent)]  # an explicit root wins
        # the pin pass in a fresh process, so its peak RSS is measured
        fresh_pin = [py, "-c", "import sys; from grokfetch.integrity.verify import pin; "
                     "pin(sys.argv[1], torrent=sys.argv[2])", str(root), str(torrent)]

        def run(cmd: list[str], cwd: Path = REPO) -> Callable[[], Run]:
            return lambda: timed(cmd, cwd, env)

        def lib() -> Run:
            t0, c0 = time.perf_counter(), time.process_time()
            r = verify(root)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert r.ok and r.summary["OK"] == len(paths), r.summary
            return dt, cpu, 0

        def dd() -> Run:
            t0 = time.perf_counter()
            cpu = 0.0
            for p in paths:
                cpu += timed(["dd", f"if={p}", "of=/dev/null", "bs=16M", "status=none"],
                             root)[1]
            return time.perf_counter() - t0, cpu, 0

        b3sum = ("b3sum --check", run(["b3sum", "--check", str(sums)], root))
        ours = ("grokfetch verify (CLI)", run(cli))
        by_torrent = ("grokfetch verify --torrent (CLI)", run(cli_torrent))
        pin_pass = ("pin pass: SHA-1 pieces + BLAKE3", run(fresh_pin))
        hot_tools = [b3sum, ours, ("grokfetch verify (library)", lib), by_torrent, pin_pass]
        if args.sha256sum:
            hot_tools.append(("sha256sum --check",
                              run(["sha256sum", "--check", str(sha_sums)], root)))
        for _, fn in hot_tools:  # warm-up: page cache, bytecode cache
            fn()
        hot = print_table(f"hot page cache: {len(paths)} files, {total / 1e9:.2f} GB, median "
                          f"of {args.repeat} interleaved rounds",
                          bench_rounds(hot_tools, args.repeat), total, b3sum[0])
        start_up = statistics.median(
            timed([py, "-m", "grokfetch", "verify", "--help"], REPO, env)[0]
            for _ in range(args.repeat))
        print_floor(total, hot[b3sum[0]], hot[ours[0]], start_up)
        cold: dict[str, float] = {}
        if not args.no_cold:
            evict(paths)
            left = resident_mb(paths)
            still = (f"fincore: {left:.0f} MB of the files still cached after it"
                     if left is not None else "fincore not installed")
            print(f"\ncold: posix_fadvise(DONTNEED) before each run ({still})")
            cold_tools = [("dd bs=16M (raw sequential read)", dd), b3sum, ours, by_torrent,
                          pin_pass]
            cold = print_table("cold cache, median of the same rounds",
                               bench_rounds(cold_tools, args.repeat, lambda: evict(paths)),
                               total, "dd bs=16M (raw sequential read)")

        print("\nratios (medians; time against time):")
        print(f"  grokfetch verify (CLI) against b3sum, hot: "
              f"{hot[b3sum[0]] / hot[ours[0]]:.2f}x b3sum's speed (target >= 1.0x)")
        print(f"  pin pass / verify --torrent alone, hot: "
              f"{hot[pin_pass[0]] / hot[by_torrent[0]]:.2f}x its time (target <= 1.3x)")
        if cold:
            dd_s = cold["dd bs=16M (raw sequential read)"]
            print(f"  pin pass / verify --torrent alone, cold: "
                  f"{cold[pin_pass[0]] / cold[by_torrent[0]]:.2f}x its time (target <= 1.3x)")
            print(f"  grokfetch verify (CLI), cold: {cold[ours[0]] / dd_s:.2f}x dd's time "
                  f"(target <= 1.05x); b3sum cold: {cold[b3sum[0]] / dd_s:.2f}x")
        print(f"\nafter: {load_text()}")
        shutil.rmtree(tree, ignore_errors=True)  # left by a --keep run
        bench_changed_only(tree, args.repeat, env)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(tree, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
