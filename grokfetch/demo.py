"""The whole pipeline, for real, on a small checkpoint, in about a minute.

``run_demo`` synthesizes a checkpoint in the real format, makes its torrent,
starts a seeder (a real libtorrent session in a separate process, on
127.0.0.1 only: no DHT, LSD, UPnP or NAT-PMP), and then runs the same library
code the commands run: ``get`` by magnet link with a peer hint, ``verify``
against the torrent's pieces and then against the pinned manifest,
``repack --format safetensors``, ``verify`` of the repacked folder, and
``smoke`` on the original and the repacked weights with ``--compare``.

Every stage is recorded as a ``Stage`` (result, time, bytes); the seeder is
stopped and the work folder removed in ``finally`` blocks, so Ctrl-C at any
point leaves nothing running and nothing behind (unless ``keep``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokfetch.errors import GrokfetchError, Interrupted, TorrentError
from grokfetch.fetch import torrent
from grokfetch.format import metainfo
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest
from grokfetch.integrity import verify
from grokfetch.model import smoke
from grokfetch.repack import run as repack
from grokfetch.synth import synthesize

LOOPBACK = torrent.NetOptions(listen="127.0.0.1:0", dht=False, utp=False)
SEEDER_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Stage:
    name: str  # what ran, as the user would type it
    passed: bool
    seconds: float
    nbytes: int  # bytes the stage processed (0 when not meaningful)
    detail: str  # one line: what it found

    @property
    def throughput(self) -> float | None:
        """MB/s, when the stage moved bytes."""
        if not self.nbytes or self.seconds <= 0:
            return None
        return self.nbytes / self.seconds / 1e6


@dataclass(frozen=True)
class DemoReport:
    workdir: Path
    kept: bool
    stages: list[Stage]
    bytes_synthesized: int
    bytes_verified: int  # bytes proven by the torrent pieces after the download
    seeder_stopped: bool
    seeder_pid: int | None = None

    @property
    def passed(self) -> bool:
        return bool(self.stages) and all(s.passed for s in self.stages) and self.seeder_stopped

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "workdir": str(self.workdir),
            "kept": self.kept,
            "bytes_synthesized": self.bytes_synthesized,
            "bytes_verified": self.bytes_verified,
            "seeder_stopped": self.seeder_stopped,
            "seeder_pid": self.seeder_pid,
            "stages": [
                {"stage": s.name, "passed": s.passed, "seconds": round(s.seconds, 3),
                 "bytes": s.nbytes, "mb_per_s": None if s.throughput is None
                 else round(s.throughput, 1), "detail": s.detail}
                for s in self.stages
            ],
        }


@dataclass
class _Recorder:
    on_stage: Callable[[Stage], None] | None
    stages: list[Stage] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage; the body fills ``out['bytes']``, ``out['detail']``, ``out['passed']``."""
        out: dict[str, Any] = {"bytes": 0, "detail": "", "passed": True}
        t = time.monotonic()
        try:
            yield out
        except GrokfetchError as e:
            out["passed"], out["detail"] = False, str(e)
            raise
        finally:
            s = Stage(name, bool(out["passed"]), time.monotonic() - t, int(out["bytes"]),
                      str(out["detail"]))
            self.stages.append(s)
            if self.on_stage:
                self.on_stage(s)


class _SeederProcess:
    """``grokfetch seed`` in a child process; stop() always leaves nothing running."""

    def __init__(self, folder: Path, torrent_path: Path):
        self.cmd = [sys.executable, "-m", "grokfetch", "seed", str(folder),
                    "--torrent", str(torrent_path), "--listen", "127.0.0.1:0",
                    "--no-dht", "--no-utp", "--json-progress"]
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> dict[str, Any]:
        env = dict(os.environ, GROKFETCH_NO_PROGRESS="1")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + SEEDER_START_TIMEOUT
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "seeding":
                    return event
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        self.stop()
        raise TorrentError(f"the demo seeder did not start: {err.strip() or 'no magnet printed'}")

    def stop(self) -> bool:
        """Stop the seeder (SIGINT, then SIGKILL); True when it is gone."""
        p = self.proc
        if p is None:
            return True
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()
        return p.poll() is not None


def run_demo(keep: str | os.PathLike[str] | None = None, num_layers: int | None = None,
             on_stage: Callable[[Stage], None] | None = None,
             on_progress: Callable[[torrent.Progress], None] | None = None) -> DemoReport:
    """Run every stage; return the report (stages that ran, pass or fail).

    ``keep``: a folder to keep everything in (created); default a temp folder
    that is removed at the end.  ``num_layers``: decoder layers of the
    synthetic checkpoint (default: the mini preset's 12).
    """
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="grokfetch-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    rec = _Recorder(on_stage)
    seeder: _SeederProcess | None = None
    stopped = True
    synthesized = verified_bytes = 0
    try:
        src = work / "seeder" / "grok-mini"
        with rec.stage("grokfetch synth") as out:
            m = synthesize(src, "mini", num_layers=num_layers)
            synthesized = out["bytes"] = m.total_size
            layers = m.config.num_layers if m.config else "?"
            out["detail"] = (f"{len(m.files)} files, {layers} layers "
                             f"(real format: numpy 1.x pickles, JAX flatten order)")
        with rec.stage("make torrent + start seeder") as out:
            tpath = metainfo.make_torrent(src, piece_size=64 * 1024)
            seeder = _SeederProcess(src, tpath)
            stopped = False
            event = seeder.start()
            magnet, port = event["magnet"], int(event["port"])
            out["detail"] = f"seeding on 127.0.0.1:{port} in pid {seeder.pid}"
        dest = work / "leecher"
        with rec.stage("grokfetch get MAGNET --peer") as out:
            # pin=False here only so the next stage can show the torrent-piece check
            # on its own; `grokfetch get` pins by default, through the same verify.pin.
            got = torrent.download(magnet, dest, manifest=src / MANIFEST_NAME,
                                   peers=[("127.0.0.1", port)], net=LOOPBACK, pin=False,
                                   on_progress=on_progress, timeout=120)
            out["bytes"] = got.wanted
            out["passed"] = got.complete
            out["detail"] = (f"{got.files} files, {got.downloaded:,} bytes received, "
                             f"every piece hash-checked")
        with rec.stage("grokfetch verify --torrent --pin") as out:
            # One pass: every byte is checked against the torrent's pieces as it is
            # hashed into the pin.  The synthesized manifest plays the part of
            # manifests/grok-1.json: it carries the model config into the pin.
            pinned = verify.pin(got.root, base=load_manifest(src / MANIFEST_NAME),
                                torrent=got.torrent_path)
            r = pinned.report
            verified_bytes = out["bytes"] = sum(f.size or 0 for f in r.files
                                                if f.status == verify.OK)
            out["passed"] = r.proven and r.trust == "torrent"
            out["detail"] = f"{_verify_detail(r)}; pinned {pinned.path.name}"
        with rec.stage("grokfetch verify (pinned BLAKE3)") as out:
            r = verify.verify(got.root)
            out["bytes"] = r.bytes_hashed
            out["passed"] = r.proven and r.trust == "pinned"
            out["detail"] = _verify_detail(r)
        stopped = seeder.stop()
        repacked = work / "repacked"
        with rec.stage("grokfetch repack --format safetensors") as out:
            rp = repack.repack(got.root, repacked)
            out["bytes"] = rp.payload_total
            out["detail"] = f"{rp.files} safetensors files ({rp.layout}, {rp.dtype})"
        with rec.stage("grokfetch verify REPACKED") as out:
            r = verify.verify(repacked)
            out["bytes"] = r.bytes_hashed
            out["passed"] = r.proven
            out["detail"] = _verify_detail(r)
        with rec.stage("grokfetch smoke --all") as out:
            s = smoke.smoke(got.root, all_layers=True)
            out["passed"] = s.passed
            out["detail"] = (f"{len(s.checks)} checks "
                             f"{'passed' if s.passed else 'FAILED: ' + _names(s.failed)}")
        with rec.stage("grokfetch smoke --all --compare REPACKED") as out:
            _a, b, cmp = smoke.smoke_compare(
                got.root, repacked, functools.partial(smoke.run_smoke, all_layers=True))
            out["passed"] = cmp.passed and b.passed
            out["detail"] = ("bit-identical outputs" if cmp.identical
                             else f"largest difference {cmp.largest.max_abs_diff:.3g}")
    except Interrupted:
        raise  # Ctrl-C: the finally block below still stops the seeder and cleans up
    except GrokfetchError:
        pass  # the failing stage is recorded; the report says which
    finally:
        if seeder is not None:
            stopped = seeder.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    pid = seeder.pid if seeder is not None else None
    return DemoReport(work, bool(keep), rec.stages, synthesized, verified_bytes, stopped, pid)


def _verify_detail(r: verify.VerifyReport) -> str:
    counts = {k: v for k, v in r.summary.items() if v}
    return f"{', '.join(f'{v} {k}' for k, v in counts.items())}; trust: {r.trust}"


def _names(checks: Any) -> str:
    return ", ".join(c.name for c in checks)
