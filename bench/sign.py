"""Benchmark: ``grokfetch sign`` / ``verify --signature`` against ``model_signing`` on one tree.

Builds a ~5 GB tree of random bytes in /tmp shaped like the checkpoint
(three 1.6 GB MoE-sized files and a spread of the smaller real sizes),
warms the page cache, then times, one run each, in this order:

* SHA-256, whole files (every OMS verifier's default; the only kind the
  model_signing CLI handles): sign and verify, through each tool's Python
  API, then through each tool's CLI (Python start-up and imports included);
* BLAKE3, whole files: sign and verify through the APIs (model_signing's CLI
  has no hash option);
* SHA-256, 1 GB shards: sign with both; verify with grokfetch only
  (model_signing 1.1.1 cannot verify shard signatures, its own included);

and prints seconds, GB/s and the ratio model_signing time / grokfetch time
(above 1: grokfetch is faster).  Which tool runs first alternates by row.
Each verification checks the signature the same tool made.  The tree is
deleted afterwards (``--keep`` keeps it).

    python bench/sign.py [--dir /tmp/grokfetch-bench-sign] [--scale 1.0] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from grokfetch.integrity.signing import sign_folder, verify_bundle  # noqa: E402
from grokfetch.integrity.verify import verify  # noqa: E402

# (count, bytes each): sizes of the real checkpoint's files, fewer of each.
SHAPE = [
    (3, 1_611_137_347),  # MoE linear / linear_v / linear_1
    (4, 37_847_359),  # attention output
    (4, 37_761_334),  # attention query
    (16, 6_293_814),  # key / value
    (16, 196_770),  # router
    (64, 24_727),  # RMSNorm scales
]


def make_tree(root: Path, scale: float) -> int:
    import numpy as np

    rng = np.random.default_rng(0)
    ckpt = root / "ckpt-0"
    ckpt.mkdir(parents=True, exist_ok=True)
    total = i = 0
    for count, size in SHAPE:
        size = max(1, int(size * scale))
        for _ in range(count):
            with open(ckpt / f"tensor{i:05d}_000", "wb") as f:
                left = size
                while left:
                    n = min(left, 64 << 20)
                    f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
                    left -= n
            total += size
            i += 1
    return total


def keys(folder: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    priv, pub = folder / "bench-key.pem", folder / "bench-key.pub"
    priv.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def clock(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/grokfetch-bench-sign"))
    ap.add_argument("--scale", type=float, default=1.0, help="file sizes x SCALE (disk short?)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    import model_signing

    work = a.dir
    model = work / "model"
    if model.exists():
        shutil.rmtree(model)
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        total = make_tree(model, a.scale)
        print(f"tree: {model}, {sum(c for c, _ in SHAPE)} files, {total / 1e9:.2f} GB "
              f"(written in {time.perf_counter() - t:.1f} s)")
        priv, pub = keys(work)
        sigs = work / "sigs"
        sigs.mkdir(exist_ok=True)
        verify_bundle  # noqa: B018 - imported above: cryptography loaded before timing
        for p in sorted(model.rglob("*")):  # warm the page cache
            if p.is_file():
                with open(p, "rb") as f:
                    while f.read(64 << 20):
                        pass

        def ms_hashing(hash_type: str, shard_size: int | None = None):
            h = model_signing.hashing.Config()
            if shard_size:
                return h.use_shard_serialization(hashing_algorithm=hash_type,
                                                 shard_size=shard_size)
            return h.use_file_serialization(hashing_algorithm=hash_type)

        def ms_sign(sig: Path, hash_type: str, shard_size: int | None = None) -> None:
            model_signing.signing.Config().use_elliptic_key_signer(
                private_key=priv).set_hashing_config(ms_hashing(hash_type, shard_size)).sign(
                model, sig)

        def ms_verify(sig: Path) -> None:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(
                model, sig)

        def gf_verify(sig: Path) -> None:
            r = verify(model, signature=verify_bundle(sig, public_key=pub))
            if not r.ok:
                raise SystemExit(f"grokfetch verify failed: {[f.line() for f in r.problems]}")

        rows: list[tuple[str, float, float | None]] = []

        def pair(what: str, ours: Callable[[], object], theirs: Callable[[], object] | None):
            # who goes first alternates, so neither tool always gets the fresher cache / quieter
            # moment of a shared machine
            if theirs is not None and len(rows) % 2:
                m: float | None = clock(theirs)
                g = clock(ours)
            else:
                g = clock(ours)
                m = clock(theirs) if theirs is not None else None
            rows.append((what, g, m))
            gbs = f"{total / 1e9 / g:5.2f} GB/s"
            if m is None:
                print(f"{what:34s} grokfetch {g:6.2f} s {gbs}   model_signing n/a")
            else:
                print(f"{what:34s} grokfetch {g:6.2f} s {gbs}   model_signing {m:6.2f} s "
                      f"{total / 1e9 / m:5.2f} GB/s   ratio {m / g:4.2f}x")

        s = {k: sigs / f"{k}.sig" for k in
             ("gf-sha", "ms-sha", "gf-b3", "ms-b3", "gf-sh", "ms-sh", "gf-cli", "ms-cli")}
        pair("sha256 files: sign (API)",
             lambda: sign_folder(model, priv, signature=s["gf-sha"]),
             lambda: ms_sign(s["ms-sha"], "sha256"))
        pair("sha256 files: verify (API)",
             lambda: gf_verify(s["gf-sha"]), lambda: ms_verify(s["ms-sha"]))
        py = sys.executable
        pair("sha256 files: sign (CLI)",
             lambda: run([py, "-m", "grokfetch", "sign", str(model), "--key", str(priv),
                          "--signature", str(s["gf-cli"]), "--quiet"]),
             lambda: run([py, "-m", "model_signing", "sign", "key", str(model),
                          "--private_key", str(priv), "--signature", str(s["ms-cli"])]))
        pair("sha256 files: verify (CLI)",
             lambda: run([py, "-m", "grokfetch", "verify", str(model), "--signature",
                          str(s["gf-cli"]), "--public-key", str(pub), "--quiet"]),
             lambda: run([py, "-m", "model_signing", "verify", "key", str(model),
                          "--signature", str(s["ms-cli"]), "--public_key", str(pub)]))
        pair("blake3 files: sign (API)",
             lambda: sign_folder(model, priv, signature=s["gf-b3"], hash_type="blake3"),
             lambda: ms_sign(s["ms-b3"], "blake3"))
        pair("blake3 files: verify (API)",
             lambda: gf_verify(s["gf-b3"]), lambda: ms_verify(s["ms-b3"]))
        pair("sha256 1 GB shards: sign (API)",
             lambda: sign_folder(model, priv, signature=s["gf-sh"], shard_size=10**9),
             lambda: ms_sign(s["ms-sh"], "sha256", 10**9))
        pair("sha256 1 GB shards: verify (API)", lambda: gf_verify(s["gf-sh"]), None)
        print("ratio = model_signing seconds / grokfetch seconds (above 1: grokfetch faster); "
              "one run each, hot page cache")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
