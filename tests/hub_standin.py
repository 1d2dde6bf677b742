"""A loopback stand-in for the Hugging Face Hub and its CDN (tests and benchmarks).

It speaks the HTTP protocol that ``huggingface_hub`` (and so ``hf download``)
uses, on two ports of 127.0.0.1, so grokfetch's mirror client is tested
against the same requests the real Hub answers:

* ``GET /api/models/{repo}/revision/{rev}``: the repository's commit (``sha``)
  and its files (``siblings``);
* ``GET /api/models/{repo}/tree/{rev}[/{folder}]?recursive=true``: the file
  list, in pages of ``page_size`` entries, the next page named by a
  ``Link: <...>; rel="next"`` header carrying a cursor, each file with its
  ``size``, git ``oid`` and, for LFS files, ``lfs: {oid: SHA-256, size}``;
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: ``302`` to the second ("CDN")
  port, with ``X-Repo-Commit``, ``X-Linked-Etag`` (the SHA-256) and
  ``X-Linked-Size``;
* the CDN: ``GET|HEAD /blobs/{sha256}`` with single ``Range`` support,
  served with sendfile (so the stand-in is not the bottleneck of a benchmark);
* ``GET /download/{btih}.torrent``: a published .torrent, if one is set (the
  way the real site serves it: web-seed URLs injected).

Faults are injected by setting attributes (see ``Faults``): 429 bursts with
Retry-After, 503s, a corrupted range, a connection cut mid-body, a wrong
SHA-256 in the tree listing, a required token.  Every byte the CDN sends is
counted, per file, so tests can prove what was (not) fetched again.

``python tests/hub_standin.py serve REPO FOLDER_ON_DISK`` runs it in the
foreground and prints the two ports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Which files are "LFS" files (SHA-256 oid; the others are git blobs with a SHA-1 oid), as a
# repository's .gitattributes decides: everything in the checkpoint folder (xai-org/grok-1
# tracks ckpt-0/* with LFS, small tensors included), elsewhere files of at least LFS_MIN bytes.
LFS_MIN = 1024
LFS_FOLDER = "ckpt-0/"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RepoFile:
    path: str  # in the repository, '/'-separated
    disk: Path
    size: int
    sha256: str
    git_oid: str
    lfs: bool


@dataclass
class Faults:
    """Injected faults; each counter is consumed as requests arrive."""

    cdn_429: int = 0  # the next N CDN requests answer 429 with Retry-After
    retry_after: str = "1"
    hub_429: int = 0  # the next N resolve/API requests answer 429
    cdn_503: int = 0  # the next N CDN requests answer 503
    cut: int = 0  # the next N CDN bodies stop halfway and the connection is closed
    corrupt: dict[str, int] = field(default_factory=dict)  # path -> N bodies with a flipped byte
    wrong_sha256: dict[str, str] = field(default_factory=dict)  # path -> sha256 the tree reports
    token: str | None = None  # when set, the Hub answers 401 without "Authorization: Bearer T"
    delay: float = 0.0  # seconds to sleep per CDN body chunk (a slow mirror)


class HubStandin:
    """Two ThreadingHTTPServers on 127.0.0.1: the Hub (``endpoint``) and its CDN."""

    def __init__(self, repo: str, files: dict[str, Path], *, page_size: int = 50,
                 revision: str = "main", torrent: bytes | None = None,
                 torrent_btih: str | None = None) -> None:
        self.repo = repo
        self.revision = revision
        self.commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        self.page_size = page_size
        self.files: dict[str, RepoFile] = {}
        for rel, disk in sorted(files.items()):
            data = Path(disk).read_bytes()
            self.files[rel] = RepoFile(rel, Path(disk), len(data),
                                       hashlib.sha256(data).hexdigest(), git_blob_sha1(data),
                                       rel.startswith(LFS_FOLDER) or len(data) >= LFS_MIN)
        self.by_sha = {f.sha256: f for f in self.files.values()}
        self.torrent = torrent
        self.torrent_btih = torrent_btih
        self.faults = Faults()
        self.lock = threading.Lock()
        self.served: dict[str, int] = {}  # repo path -> body bytes the CDN sent
        self.requests: list[tuple[str, str, str]] = []  # (server, method, path + range)
        self.auth_seen: dict[str, int] = {"hub": 0, "cdn": 0}
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "hub"))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "cdn"))
        for s in (self.hub, self.cdn):
            s.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True)
                         for s in (self.hub, self.cdn)]

    @property
    def torrent_url(self) -> str:
        return f"{self.endpoint}/download/{self.torrent_btih or 'none'}.torrent"

    def start(self) -> HubStandin:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self.hub, self.cdn):
            s.shutdown()
            s.server_close()

    def __enter__(self) -> HubStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def total_served(self) -> int:
        with self.lock:
            return sum(self.served.values())

    def reset_counts(self) -> None:
        with self.lock:
            self.served.clear()
            self.requests.clear()

    def take(self, name: str) -> bool:
        """Consume one unit of an integer fault counter."""
        with self.lock:
            n = getattr(self.faults, name)
            if n > 0:
                setattr(self.faults, name, n - 1)
                return True
            return False

    def tree_entry(self, f: RepoFile) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "file", "path": f.path, "size": f.size, "oid": f.git_oid}
        if f.lfs:
            sha = self.faults.wrong_sha256.get(f.path, f.sha256)
            d["lfs"] = {"oid": sha, "size": f.size, "pointerSize": 134}
        return d


def _handler(hub: HubStandin, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real servers

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, obj: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _status(self, code: int, headers: dict[str, str] | None = None) -> None:
            body = json.dumps({"error": f"status {code}"}).encode()
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            with hub.lock:
                hub.requests.append((role, self.command,
                                     f"{self.path} {self.headers.get('Range', '')}".strip()))
                if self.headers.get("Authorization"):
                    hub.auth_seen[role] += 1
            try:
                if role == "hub":
                    self._hub()
                else:
                    self._cdn()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        # ---------------------------------------------------------------- Hub

        def _hub(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            query = urllib.parse.parse_qs(url.query)
            m = re.fullmatch(r"/download/([0-9a-f]{40})\.torrent", path)
            if m:
                if hub.torrent is None or m.group(1) != hub.torrent_btih:
                    return self._status(404)
                body = hub.torrent
                self.send_response(200)
                self.send_header("Content-Type", "application/x-bittorrent")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if hub.faults.token is not None and (
                self.headers.get("Authorization") != f"Bearer {hub.faults.token}"
            ):
                return self._status(401)
            if hub.take("hub_429"):
                return self._status(429, {"Retry-After": hub.faults.retry_after})
            api = f"/api/models/{hub.repo}/"
            if path.startswith(api + "revision/"):
                return self._json({
                    "id": hub.repo, "modelId": hub.repo, "sha": hub.commit, "private": False,
                    "siblings": [{"rfilename": p} for p in hub.files],
                })
            if path.startswith(api + "tree/"):
                rest = path[len(api + "tree/"):]
                rev, _, folder = rest.partition("/")
                if rev not in (hub.revision, hub.commit):
                    return self._status(404)
                listed = [f for f in hub.files.values()
                          if not folder or f.path.startswith(folder.rstrip("/") + "/")]
                cursor = int(query.get("cursor", ["0"])[0])
                page = listed[cursor: cursor + hub.page_size]
                headers = {}
                if cursor + hub.page_size < len(listed):
                    nxt = urllib.parse.urlencode({"recursive": "true",
                                                  "cursor": cursor + hub.page_size})
                    headers["Link"] = f'<{hub.endpoint}{url.path}?{nxt}>; rel="next"'
                return self._json([hub.tree_entry(f) for f in page], headers)
            prefix = f"/{hub.repo}/resolve/"
            if path.startswith(prefix):
                rev, _, rel = path[len(prefix):].partition("/")
                f = hub.files.get(rel)
                if f is None or rev not in (hub.revision, hub.commit):
                    return self._status(404, {"X-Error-Code": "EntryNotFound"})
                sig = hashlib.sha1(f"{f.sha256}{time.time()}".encode()).hexdigest()[:16]
                self.send_response(302)
                self.send_header("Location", f"{hub.cdn_url}/blobs/{f.sha256}?sig={sig}")
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", f'"{f.git_oid}"')
                if f.lfs:
                    self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                    self.send_header("X-Linked-Size", str(f.size))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            return self._status(404)

        # ---------------------------------------------------------------- CDN

        def _cdn(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            m = re.fullmatch(r"/blobs/([0-9a-f]{64})", path)
            f = hub.by_sha.get(m.group(1)) if m else None
            if f is None:
                return self._status(404)
            if hub.take("cdn_429"):
                return self._status(429, {"Retry-After": hub.faults.retry_after})
            if hub.take("cdn_503"):
                return self._status(503)
            start, end = 0, f.size - 1
            rng = self.headers.get("Range")
            code = 200
            if rng:
                mr = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                if not mr or int(mr.group(1)) >= max(f.size, 1):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{f.size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(mr.group(1))
                end = min(f.size - 1, int(mr.group(2))) if mr.group(2) else f.size - 1
                code = 206
            length = end - start + 1
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{f.sha256}"')
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            cut = hub.take("cut")
            corrupt = False
            with hub.lock:
                if hub.faults.corrupt.get(f.path, 0) > 0:
                    hub.faults.corrupt[f.path] -= 1
                    corrupt = True
            send = length // 2 if cut else length
            self._send_body(f, start, send, corrupt)
            if cut:
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(2)

        def _send_body(self, f: RepoFile, start: int, length: int, corrupt: bool) -> None:
            self.wfile.flush()
            sock = self.connection
            with open(f.disk, "rb") as src:
                if corrupt or hub.faults.delay:
                    src.seek(start)
                    left, first = length, True
                    while left > 0:
                        buf = bytearray(src.read(min(left, 256 << 10)))
                        if corrupt and first and buf:
                            buf[len(buf) // 2] ^= 0xFF
                        first = False
                        if hub.faults.delay:
                            time.sleep(hub.faults.delay)
                        sock.sendall(buf)
                        self._count(f, len(buf))
                        left -= len(buf)
                    return
                off, left = start, length
                while left > 0:
                    n = os.sendfile(sock.fileno(), src.fileno(), off, min(left, 8 << 20))
                    if n <= 0:
                        break
                    self._count(f, n)
                    off += n
                    left -= n

        def _count(self, f: RepoFile, n: int) -> None:
            with hub.lock:
                hub.served[f.path] = hub.served.get(f.path, 0) + n

    return Handler


def repo_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """Every file under ``folder``, keyed by its repository path (``prefix`` + relative path)."""
    return {prefix + p.relative_to(folder).as_posix(): p
            for p in sorted(folder.rglob("*")) if p.is_file() and ".grokfetch" not in p.parts}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        with HubStandin(sys.argv[2], repo_files(Path(sys.argv[3]))) as h:
            print(h.endpoint, h.cdn_url, flush=True)
            threading.Event().wait()
    else:
        sys.exit("usage: hub_standin.py serve REPO FOLDER")
