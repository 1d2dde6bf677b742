"""Helpers for the BitTorrent tests: a seeder subprocess, a Range-capable HTTP server, a
`grokfetch get` subprocess that yields its JSON events, and hand-built torrents.

Everything binds to 127.0.0.1 and runs TCP only with DHT/LSD/UPnP/NAT-PMP off.
Waiting is done against deadlines, never with fixed sleeps.

Run as a script, ``python tests/lt_helpers.py serve DIR`` serves DIR over HTTP
with Range support on a free loopback port and prints the port (python's own
http.server ignores Range, and a BEP 19 web seed cannot work without it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = ["--listen", "127.0.0.1:0", "--no-dht", "--no-utp"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["GROKFETCH_NO_PROGRESS"] = "1"
    return env


def grokfetch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "grokfetch", *args]


class JsonProc:
    """A subprocess printing JSON lines on stdout, read by a background thread."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
            cwd=REPO,
        )
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            with self._lock:
                self.events.append(json.loads(line))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def wait_for(self, pred: Any, timeout: float, what: str = "event") -> dict[str, Any]:
        """First event matching ``pred``; AssertionError (with stderr) after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            evs = self.snapshot()
            for ev in evs[seen:]:
                if pred(ev):
                    return ev
            seen = len(evs)
            if self.proc.poll() is not None and not self._reader.is_alive():
                evs = self.snapshot()
                for ev in evs[seen:]:
                    if pred(ev):
                        return ev
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no {what} within {timeout} s from {' '.join(self.args[2:5])}; "
            f"rc={self.proc.poll()}; stderr: {self.read_stderr()[-2000:]}"
        )

    def read_stderr(self) -> str:
        if self.proc.poll() is not None and self.proc.stderr is not None and not self.stderr:
            self.stderr = self.proc.stderr.read()
        return self.stderr

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        self.read_stderr()
        return rc

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class SeederProc(JsonProc):
    """`grokfetch seed FOLDER` on loopback in a subprocess (a real libtorrent session)."""

    def __init__(self, folder: Path, *extra: str, timeout: float = 30.0) -> None:
        super().__init__(grokfetch_cmd("seed", str(folder), *LOOPBACK, "--json-progress", *extra))
        ev = self.wait_for(lambda e: e.get("event") == "seeding", timeout, "seeding line")
        self.magnet: str = ev["magnet"]
        self.port: int = ev["port"]
        self.info_hash: str = ev["info_hash"]
        self.torrent = Path(ev["torrent"])
        self.peer = f"127.0.0.1:{self.port}"

    @property
    def bare_magnet(self) -> str:
        """The magnet without its x.pe peer hint (so only --peer can find the seeder)."""
        return re.sub(r"&x\.pe=[^&]*", "", self.magnet)

    def stop(self, timeout: float = 15.0) -> dict[str, Any]:
        """SIGTERM, wait, and return the final status (uploaded bytes etc.)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        rc = self.wait(timeout)
        assert rc == 0, f"seeder exit {rc}: {self.stderr[-2000:]}"
        last = [e for e in self.snapshot() if e.get("event") == "stopped"]
        assert last, f"seeder printed no final status: {self.stderr[-2000:]}"
        return last[-1]

    def __enter__(self) -> SeederProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class GetProc(JsonProc):
    """`grokfetch get ... --json-progress` in a subprocess (so it can be signalled)."""

    def __init__(self, *args: str) -> None:
        super().__init__(grokfetch_cmd("get", *args, *LOOPBACK, "--json-progress"))

    def progress(self) -> list[dict[str, Any]]:
        return [e for e in self.snapshot() if e.get("event") == "progress"]

    def messages(self) -> list[str]:
        return [e["message"] for e in self.snapshot() if e.get("event") == "message"]

    def result(self) -> dict[str, Any]:
        done = [e for e in self.snapshot() if e.get("event") == "done"]
        assert done, f"no result; stderr: {self.read_stderr()[-2000:]}"
        return done[-1]

    def __enter__(self) -> GetProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_get(*args: str, timeout: float = 60.0) -> GetProc:
    """Run `grokfetch get` to the end; return the finished process (events, rc, stderr)."""
    g = GetProc(*args)
    try:
        g.wait(timeout)
    except subprocess.TimeoutExpired:
        g.kill()
        raise AssertionError(
            f"get did not finish in {timeout} s: {g.read_stderr()[-2000:]}") from None
    return g


# --------------------------------------------------------------------------- HTTP


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single-range ``Range: bytes=a-b`` support (what BEP 19 needs)."""

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def send_head(self) -> Any:
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if rng is None or not os.path.isfile(path):
            return super().send_head()
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        size = os.path.getsize(path)
        if not m or (m.group(1) == "" and m.group(2) == ""):
            self.send_error(416)
            return None
        if m.group(1) == "":
            start, end = max(0, size - int(m.group(2))), size - 1
        else:
            start = int(m.group(1))
            end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
        if start > end or start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        f = open(path, "rb")  # noqa: SIM115 - copyfile closes it via do_GET
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source: Any, outputfile: Any) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            buf = source.read(min(remaining, 1 << 16))
            if not buf:
                break
            outputfile.write(buf)
            remaining -= len(buf)


def serve(folder: str) -> None:
    os.chdir(folder)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


class HttpServerProc:
    """The Range-capable server in a subprocess; ``url`` is the served folder's URL."""

    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve", str(folder)],
            stdout=subprocess.PIPE, text=True, env=_env(),
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> HttpServerProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- torrents


def _bencode(x: Any) -> bytes:
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(_bencode(i) for i in x) + b"e"
    if isinstance(x, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in x.items())
        return b"d" + b"".join(_bencode(k) + _bencode(v) for k, v in items) + b"e"
    raise TypeError(type(x))


def handmade_torrent(name: str, files: Sequence[tuple[Sequence[str], bytes]],
                     piece_length: int = 16384) -> bytes:
    """A v1 torrent written byte by byte, so it can say things libtorrent would never write
    (like a ``..`` path component)."""
    blob = b"".join(data for _, data in files)
    pieces = b"".join(
        hashlib.sha1(blob[i: i + piece_length]).digest()
        for i in range(0, len(blob), piece_length)
    )
    info = {
        "name": name,
        "piece length": piece_length,
        "pieces": pieces,
        "files": [{"length": len(data), "path": list(path)} for path, data in files],
    }
    return _bencode({"info": info})


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def iter_lines(path: Path) -> Iterator[str]:
    with open(path) as f:
        yield from f


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        serve(sys.argv[2])
    else:
        sys.exit("usage: lt_helpers.py serve DIR")


def run_in_pty(args: Sequence[str], timeout: float = 60.0,
               env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``grokfetch ARGS`` with stdin, stdout and stderr on a real terminal (a pty).

    Returns the exit code and everything the terminal showed (bars included:
    progress is on, as for a user at a terminal).
    """

    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    # a fresh pty is 0 columns wide (tqdm would draw nothing): make it a 160x40 terminal
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    e = _env()
    e.pop("GROKFETCH_NO_PROGRESS", None)
    e.update(env or {})
    proc = subprocess.Popen(grokfetch_cmd(*args), stdin=slave, stdout=slave, stderr=slave,
                            env=e, cwd=REPO, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{args} did not finish in {timeout} s: "
                                     f"{b''.join(chunks)[-2000:]!r}")
            import select

            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return rc, b"".join(chunks).decode("utf-8", "replace")


def run_piped(args: Sequence[str], timeout: float = 60.0,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``grokfetch ARGS`` with stderr piped (a log: nohup, systemd), progress not silenced."""
    e = _env()
    e.pop("GROKFETCH_NO_PROGRESS", None)
    e.update(env or {})
    return subprocess.run(grokfetch_cmd(*args), capture_output=True, text=True, env=e,
                          cwd=REPO, timeout=timeout)
