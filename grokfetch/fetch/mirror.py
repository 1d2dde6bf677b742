"""The Hugging Face mirror as a source: the Hub API, ranged reads, whole-file downloads.

Grok-1's 770 files are also on the Hugging Face Hub (``xai-org/grok-1``,
folder ``ckpt-0/``), which publishes each large file's SHA-256 (its Git LFS
object id).  The mirror is never trusted: a byte from it counts only once a
torrent piece's SHA-1 (``grokfetch.feeder``) or the whole file's SHA-256
(``download_files`` here) says it is right.

What this module relies on about the Hub's HTTP protocol (the one
``huggingface_hub`` implements, which is also what it is used for here: the
endpoint, the token, file URLs and the paginated tree listing):

* the endpoint is ``HF_ENDPOINT`` (default https://huggingface.co), a file's
  URL ``{endpoint}/{repo}/resolve/{revision}/{path}``; that URL answers with a
  redirect to a CDN host, which serves the bytes with HTTP Range support;
* the token (``HF_TOKEN``, or the one ``hf auth login`` stored) goes to the
  Hub only: redirects to another host are followed without it;
* ``/api/models/{repo}/tree/{revision}/{folder}?recursive=true`` lists the
  files in pages (``Link: <...>; rel="next"``): per file its size, git object
  id, and for LFS files ``lfs.oid``, the SHA-256 of the content.  Small
  non-LFS files carry only the git blob SHA-1, which proves them just as well
  (sha1 of ``b"blob <size>\\0" + content``);
* rate limits are 429 with ``Retry-After``; 5xx and cut connections are
  transient and retried.

``huggingface_hub``'s own downloader deletes a partial file between runs; a
318 GB download must survive restarts, so ``download_files`` keeps partial
files in DEST's state folder and continues each from what is on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import queue
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from grokfetch.errors import GrokfetchError, TorrentError, UsageError
from grokfetch.fsutil import atomic_write_json, fsync_dir, inside, start_writeback
from grokfetch.hashing import FileDigests, StreamDigests
from grokfetch.integrity.verified_record import StatKey, stat_key
from grokfetch.trust import PinRoot, now

DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_CONNECTIONS = 8  # per host, unless --max-mirror-connections says otherwise
ATTEMPTS = 8  # tries per request before the mirror's last answer is reported
BACKOFF_CAP = 30.0  # seconds: the longest pause between tries (Retry-After is capped too)
IO_TIMEOUT = 60.0  # seconds without a byte before a connection counts as dropped
READ_BLOCK = 1 << 20
WRITEBACK_EVERY = 32 << 20  # bytes written before their writeback to disk is started
URL_TTL = 600.0  # seconds a CDN redirect is reused before it is asked for again
STATE_SUBDIR = "mirror"  # partial files and the proof journal, in DEST's state folder
JOURNAL = "mirror-proven.json"


class MirrorError(TorrentError):
    """The mirror cannot give what is needed (HTTP status, refused hashes): exit 4."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- where


@dataclass(frozen=True)
class MirrorSpec:
    """A Hugging Face repository that mirrors a checkpoint (from the manifest's sources).

    Paths in the repository are the manifest's paths (the repository root is
    the checkpoint root); ``folder`` is the one that holds the tensor files.
    """

    repo: str
    revision: str = "main"
    folder: str = "ckpt-0"
    kind: str = "huggingface"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # in the repository
    size: int
    sha256: str | None  # lfs.oid: the SHA-256 of the content (LFS files)
    git_oid: str | None  # the git blob SHA-1 (what proves a small non-LFS file)

    @property
    def proof(self) -> str:
        return f"sha256 {self.sha256}" if self.sha256 else f"git blob sha1 {self.git_oid}"


def endpoint_from(option: str | None) -> str:
    """--mirror URL, else HF_ENDPOINT, else the Hub."""
    url = option or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--mirror {url!r}: expected an http(s) URL like {DEFAULT_ENDPOINT}")
    return url.rstrip("/")


def hub_token() -> str | None:
    """HF_TOKEN, or the token ``hf auth login`` stored (huggingface_hub decides)."""
    from huggingface_hub import get_token

    return get_token()


# --------------------------------------------------------------------------- HTTP


@dataclass
class Stats:
    """What the mirror did in this run (thread-safe counters)."""

    received: int = 0  # body bytes read from the mirror (not yet proven)
    proven: int = 0  # bytes a SHA-1 piece check or a file's SHA-256 accepted
    rejected: int = 0  # bytes that failed their check and were fetched again
    retries: int = 0
    last_status: int | None = None  # the last HTTP error status seen (429, 503, ...)
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def note(self, status: int | None, error: str) -> None:
        with self.lock:
            self.retries += 1
            if status is not None:
                self.last_status = status
            self.last_error = error

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"received": self.received, "proven": self.proven,
                    "rejected": self.rejected, "retries": self.retries,
                    "last_status": self.last_status, "last_error": self.last_error}


class _Transient(Exception):
    def __init__(self, what: str, status: int | None = None, wait: float | None = None):
        super().__init__(what)
        self.status = status
        self.wait = wait


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


class HubClient:
    """Ranged reads of a repository's files, with redirects, retries and a connection cap.

    Thread-safe: the file downloader and the piece feeder call ``read_range``
    from worker threads.  Connections are kept alive and reused per host;
    at most ``max_connections`` requests run against one host at a time.
    """

    def __init__(self, endpoint: str, spec: MirrorSpec, token: str | None = None,
                 max_connections: int = MAX_CONNECTIONS, attempts: int = ATTEMPTS) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.spec = spec
        self.token = token
        self.attempts = attempts
        self.max_connections = max(1, max_connections)
        self.stats = Stats()
        self.commit: str | None = None
        self._hub_host = urllib.parse.urlsplit(self.endpoint).netloc
        self._pools: dict[str, queue.LifoQueue[http.client.HTTPConnection]] = {}
        self._slots: dict[str, threading.Semaphore] = {}
        self._urls: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        rev = self.commit or self.spec.revision
        return f"{self.endpoint}/{self.spec.repo} at {rev}"

    # -- the API (huggingface_hub) --------------------------------------------------

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token or False)

    def resolve_commit(self) -> str:
        """Pin the revision to its commit, so every file comes from one snapshot."""
        if self.commit is None:
            info = self._call_api(lambda api: api.model_info(
                self.spec.repo, revision=self.spec.revision))
            self.commit = str(info.sha or self.spec.revision)
        return self.commit

    def list_files(self, folder: str | None = None) -> dict[str, RemoteFile]:
        """Every file below ``folder`` (default: the spec's) with its size and hashes."""
        from huggingface_hub.hf_api import RepoFile

        rev = self.resolve_commit()
        path = self.spec.folder if folder is None else folder
        entries = self._call_api(lambda api: list(api.list_repo_tree(
            self.spec.repo, path_in_repo=path or None, recursive=True, revision=rev)))
        out: dict[str, RemoteFile] = {}
        for e in entries:
            if isinstance(e, RepoFile):
                sha = e.lfs.sha256 if e.lfs is not None else None
                out[e.path] = RemoteFile(e.path, int(e.size), sha, e.blob_id)
        return out

    def _call_api(self, fn: Callable[[Any], Any]) -> Any:
        from huggingface_hub.errors import HfHubHTTPError

        for attempt in range(self.attempts):
            try:
                return fn(self._api())
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else None
                transient = status is not None and (status in (408, 429) or status >= 500)
                if transient and attempt + 1 < self.attempts:
                    self.stats.note(status, f"Hub API HTTP {status}")
                    wait = _retry_after(e.response.headers.get("Retry-After"))
                    time.sleep(min(BACKOFF_CAP, wait if wait is not None else 0.5 * 2 ** attempt))
                    continue
                raise MirrorError(
                    f"mirror {self.where}: the Hub API answered HTTP {status} "
                    f"({self._advice(status)})", status) from None
            except OSError as e:
                raise MirrorError(f"mirror {self.endpoint}: unreachable ({e})") from None
            except Exception as e:  # httpx transport errors and the like
                if isinstance(e, GrokfetchError):
                    raise
                what = "unreachable" if "Connect" in type(e).__name__ else type(e).__name__
                raise MirrorError(f"mirror {self.endpoint}: {what} ({e})") from None
        raise AssertionError("unreachable")

    def _advice(self, status: int | None) -> str:
        if status in (401, 403):
            return "set HF_TOKEN to a token that can read this repository"
        if status == 404:
            return "no such repository, revision or file"
        if status == 429:
            return "rate limited; wait and rerun, or lower --max-mirror-connections"
        return "rerun later"

    def file_url(self, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return str(hf_hub_url(self.spec.repo, path, revision=self.resolve_commit(),
                              endpoint=self.endpoint))

    # -- ranged reads ---------------------------------------------------------------

    def read_range(self, path: str, start: int, end: int,
                   sink: Callable[[memoryview], None],
                   stop: threading.Event | None = None) -> None:
        """Stream bytes [start, end) of ``path`` into ``sink``, retrying transient faults.

        A connection cut mid-body is resumed from the byte it stopped at;
        429 waits for Retry-After; 5xx backs off exponentially.  MirrorError
        (with the HTTP status) once ``attempts`` tries have failed.  ``stop``
        ends a pause between tries early (raising _Stopped).
        """
        pos = start
        last: _Transient | None = None
        for attempt in range(self.attempts):
            if pos >= end:
                return
            try:
                pos = self._read_once(path, pos, end, sink)
                return
            except _Transient as t:
                last = t
                self.stats.note(t.status, str(t))
                wait = t.wait if t.wait is not None else min(BACKOFF_CAP, 0.25 * 2 ** attempt)
                pause = min(BACKOFF_CAP, wait) * (1 + random.random() * 0.1)
                if stop is None:
                    time.sleep(pause)
                elif stop.wait(pause):
                    raise _Stopped from None
                pos = getattr(t, "pos", pos)
        assert last is not None
        status = f"HTTP {last.status}" if last.status is not None else str(last)
        raise MirrorError(f"mirror {self.where}: {path}: {status} after {self.attempts} tries "
                          f"({self._advice(last.status)})", last.status)

    def _headers(self, parts: urllib.parse.SplitResult, **extra: str) -> dict[str, str]:
        """A request's headers: the token goes to the Hub's own host, never to the CDN."""
        headers = {"Accept-Encoding": "identity", **extra}
        if parts.netloc == self._hub_host and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _read_once(self, path: str, pos: int, end: int,
                   sink: Callable[[memoryview], None]) -> int:
        url = self._cdn_url(path)
        parts = urllib.parse.urlsplit(url)
        headers = self._headers(parts, Range=f"bytes={pos}-{end - 1}")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        with self._connection(parts) as conn:
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise _Transient(f"connection failed: {e}") from None
            try:
                if resp.status in (301, 302, 303, 307, 308):
                    resp.read()
                    self._forget(path)
                    raise _Transient(f"redirected again ({resp.status})", wait=0)
                if resp.status in (401, 403, 404, 410) and parts.netloc != self._hub_host:
                    resp.read()  # an expired signed URL: ask the Hub for a fresh one
                    self._forget(path)
                    raise _Transient(f"CDN answered {resp.status}", resp.status, wait=0)
                if resp.status == 429 or resp.status == 408 or resp.status >= 500:
                    wait = _retry_after(resp.getheader("Retry-After"))
                    resp.read()
                    raise _Transient(f"HTTP {resp.status}", resp.status, wait)
                if resp.status not in (200, 206):
                    resp.read()
                    raise MirrorError(f"mirror {self.where}: {path}: HTTP {resp.status} "
                                      f"({self._advice(resp.status)})", resp.status)
                if resp.status == 200 and pos > 0:
                    # No Range support: skip to pos (wasteful, but still correct).
                    self._discard(resp, pos)
                return self._body(resp, pos, end, sink)
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                t = _Transient(f"connection dropped: {e}")
                t.pos = getattr(e, "pos", pos)  # type: ignore[attr-defined]
                raise t from None
            except _Transient as t:
                if getattr(t, "pos", None) is not None:
                    conn.close()
                raise

    def _body(self, resp: http.client.HTTPResponse, pos: int, end: int,
              sink: Callable[[memoryview], None]) -> int:
        buf = bytearray(min(READ_BLOCK, max(1, end - pos)))
        view = memoryview(buf)
        while pos < end:
            want = min(len(buf), end - pos)
            try:
                n = resp.readinto(view[:want])
            except (OSError, http.client.HTTPException) as e:
                t = _Transient(f"connection dropped at byte {pos}: {e}")
                t.pos = pos  # type: ignore[attr-defined]
                raise t from None
            if not n:
                t = _Transient(f"connection closed at byte {pos}")
                t.pos = pos  # type: ignore[attr-defined]
                raise t
            self.stats.add(received=n)
            sink(view[:n])
            pos += n
        return pos

    @staticmethod
    def _discard(resp: http.client.HTTPResponse, n: int) -> None:
        while n > 0:
            got = resp.read(min(n, READ_BLOCK))
            if not got:
                raise OSError("body ended early")
            n -= len(got)

    def _cdn_url(self, path: str) -> str:
        """The CDN URL the Hub redirects ``path`` to (cached; the token stays on the Hub)."""
        with self._lock:
            hit = self._urls.get(path)
        if hit is not None and time.monotonic() - hit[1] < URL_TTL:
            return hit[0]
        url = self.file_url(path)
        for _ in range(5):  # the Hub may redirect within itself (a renamed repo) first
            parts = urllib.parse.urlsplit(url)
            headers = self._headers(parts)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            with self._connection(parts) as conn:
                try:
                    conn.request("HEAD", target, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    raise _Transient(f"connection failed: {e}") from None
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urllib.parse.urljoin(url, resp.getheader("Location") or "")
                if urllib.parse.urlsplit(url).netloc != self._hub_host:
                    break
                continue
            if resp.status == 429 or resp.status >= 500:
                raise _Transient(f"HTTP {resp.status}", resp.status,
                                 _retry_after(resp.getheader("Retry-After")))
            if resp.status >= 400:
                raise MirrorError(f"mirror {self.where}: {path}: HTTP {resp.status} "
                                  f"({self._advice(resp.status)})", resp.status)
            break  # 200: the Hub serves the bytes itself
        with self._lock:
            self._urls[path] = (url, time.monotonic())
        return url

    def _forget(self, path: str) -> None:
        with self._lock:
            self._urls.pop(path, None)

    @contextlib.contextmanager
    def _connection(self, parts: urllib.parse.SplitResult) -> Any:
        host = parts.netloc
        with self._lock:
            pool = self._pools.setdefault(host, queue.LifoQueue())
            slot = self._slots.setdefault(host, threading.Semaphore(self.max_connections))
        with slot:
            try:
                conn = pool.get_nowait()
            except queue.Empty:
                cls = (http.client.HTTPSConnection if parts.scheme == "https"
                       else http.client.HTTPConnection)
                conn = cls(host, timeout=IO_TIMEOUT)
            try:
                yield conn
            except BaseException:
                # Whatever stopped the request may have left a body half read:
                # never hand that connection to the next request.
                conn.close()
                raise
            finally:
                pool.put(conn)

    def read_bytes(self, path: str, start: int, end: int) -> bytes:
        out = bytearray()
        self.read_range(path, start, end, out.extend)
        return bytes(out)


# --------------------------------------------------------------------------- checks


def check_published_hashes(remote: dict[str, RemoteFile], manifest: Any, spec: MirrorSpec,
                           client: HubClient) -> list[tuple[Any, RemoteFile]]:
    """Match the manifest's files to the mirror's listing; refuse when they disagree.

    Before the mirror's SHA-256 values are trusted to prove anything, the ones
    the manifest packages (published independently) must be what the API
    says; a disagreement names the file.  Sizes must agree for every file.
    Returns (manifest entry, remote file) for every manifest file the
    repository folder covers.
    """
    pairs = []
    problems = []
    folder = spec.folder.rstrip("/") + "/" if spec.folder else ""
    for e in manifest.files:
        if folder and not e.path.startswith(folder):
            continue
        r = remote.get(e.path)
        if r is None:
            problems.append(f"{e.path} is not on the mirror")
            continue
        if r.size != e.size:
            problems.append(f"{e.path} is {r.size} bytes on the mirror, {e.size} in the manifest")
        elif e.sha256 and r.sha256 is not None and r.sha256 != e.sha256:
            # (a small non-LFS file has no SHA-256 on the mirror; its git blob id proves it)
            problems.append(f"{e.path}: the mirror's SHA-256 {r.sha256} is not the packaged "
                            f"{e.sha256}")
        elif r.sha256 is None and r.git_oid is None:
            problems.append(f"{e.path}: the mirror publishes no hash for it")
        pairs.append((e, r))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MirrorError(f"mirror {client.where} refused: {'; '.join(problems[:3])}{more}")
    return pairs


class _Proof:
    """The hash that proves one file, fed as the bytes stream past.

    With ``chunk_size``, the same bytes also feed what the pin needs (BLAKE3 of
    the file and of its chunks, and the SHA-256 it shares with the proof), so
    the pin pass does not read the file again; ``pin`` is None otherwise.
    """

    def __init__(self, r: RemoteFile, chunk_size: int | None = None) -> None:
        self.r = r
        self.pin = StreamDigests(r.size, chunk_size) if chunk_size else None
        self._blob = None
        if not r.sha256:  # a small non-LFS file: its git blob SHA-1 proves it
            self._blob = hashlib.sha1(b"blob %d\0" % r.size)
        if self.pin is not None:
            self._sha256: Any = self.pin.sha256
        else:
            self._sha256 = hashlib.sha256() if r.sha256 else None

    def update(self, b: Any) -> None:
        if self.pin is not None:
            self.pin.update(b)  # its SHA-256 is the proof's
        elif self._sha256 is not None:
            self._sha256.update(b)
        if self._blob is not None:
            self._blob.update(b)

    def ok(self) -> bool:
        return self.digest() == (self.r.sha256 or self.r.git_oid)

    def digest(self) -> str:
        h = self._blob if self._blob is not None else self._sha256
        return str(h.hexdigest())


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FilesResult:
    root: Path
    files: int
    wanted: int  # bytes of the selected files
    fetched: int  # bytes this run read from the mirror
    proven: int  # bytes proven by their SHA-256 in this run
    kept: int  # bytes already proven on disk (an earlier run), not fetched again
    refetched: list[str]  # files whose first copy failed its hash
    elapsed: float
    commit: str
    # Per file this run proved: what stat said of it in place, and the pin's digests of the
    # bytes it streamed (with ``chunk_size``), for ``pin_mirrored`` to use unread.
    streamed: dict[str, tuple[StatKey, FileDigests]] = field(default_factory=dict)


class _Journal:
    """Which files an earlier run proved (path -> size, mtime, digest), in DEST's state folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}
        if not isinstance(self.data, dict):
            self.data = {}

    def proven(self, rel: str, disk: Path, digest: str) -> bool:
        rec = self.data.get(rel)
        try:
            st = disk.stat()
        except OSError:
            return False
        return (isinstance(rec, dict) and rec.get("digest") == digest
                and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns)

    def record(self, rel: str, disk: Path, digest: str) -> None:
        st = disk.stat()
        with self.lock:
            self.data[rel] = {"digest": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            atomic_write_json(self.path, self.data)


def download_files(
    client: HubClient,
    root: Path,
    state_dir: Path,
    pairs: Sequence[tuple[Any, RemoteFile]],
    *,
    jobs: int = 4,
    on_bytes: Callable[[int], None] | None = None,
    on_message: Callable[[str], None] | None = None,
    chunk_size: int | None = None,
    deadline: float | None = None,
    timeout: float | None = None,
) -> FilesResult:
    """Fetch whole files into ``root``, each proven by the mirror's published hash.

    Each file streams into ``state_dir/mirror/<path>.part`` (``jobs`` files at a
    time, one connection each), hashed as it arrives; a rerun continues a part
    file from its length (re-hashing what is there first, at disk speed).  A
    file whose hash disagrees is fetched again from zero once; a second
    mismatch is a MirrorError naming the file.  A proven file is fsynced (its
    writeback started as the bytes arrive, so the fsync has little left to
    wait for), checked by the safe reader (tensor files), renamed into place
    and recorded in the journal, so no rerun fetches it again.

    ``chunk_size``: also compute the pin's BLAKE3 digests from the stream
    (``FilesResult.streamed``).  ``deadline`` (time.monotonic()): stop then with
    a TorrentError saying how far it got (``timeout``: the seconds it names);
    the part files stay for the rerun.
    """
    say = on_message or (lambda _m: None)
    t0 = time.monotonic()
    part_dir = state_dir / STATE_SUBDIR
    part_dir.mkdir(parents=True, exist_ok=True)
    journal = _Journal(state_dir / JOURNAL)
    counts = {"fetched": 0, "proven": 0, "kept": 0}
    lock = threading.Lock()
    refetched: list[str] = []
    streamed: dict[str, tuple[StatKey, FileDigests]] = {}
    stop = threading.Event()

    def fetch_one(e: Any, r: RemoteFile) -> None:
        final = inside(root, e.path, "manifest path")
        digest = r.sha256 or r.git_oid or ""
        if journal.proven(e.path, final, digest):
            with lock:
                counts["kept"] += r.size
            if on_bytes:
                on_bytes(r.size)
            return
        if _already_there(final, r):  # e.g. a folder `hf download` filled: proven, kept
            journal.record(e.path, final, digest)
            say(f"{e.path}: already on disk with the published hash; kept")
            with lock:
                counts["kept"] += r.size
            if on_bytes:
                on_bytes(r.size)
            return
        part = inside(part_dir, e.path + ".part", "manifest path")
        part.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            if stop.is_set():
                return
            proof = _Proof(r, chunk_size)
            have = _resume_part(part, r.size, proof)
            if have and attempt == 1:
                say(f"{e.path}: continuing from byte {have:,} on disk")
            if on_bytes and have:
                on_bytes(have)
            with open(part, "ab", buffering=0) as f:
                fd = f.fileno()
                written = [have, have]  # bytes in the file; bytes whose writeback has started

                def sink(b: memoryview, fd: int = fd, proof: _Proof = proof,
                         written: list[int] = written) -> None:
                    if stop.is_set():
                        raise _Stopped
                    view = b
                    while view:  # os.write may write less than asked
                        view = view[os.write(fd, view):]
                    proof.update(b)
                    written[0] += len(b)
                    if written[0] - written[1] >= WRITEBACK_EVERY:
                        start_writeback(fd, written[1], written[0] - written[1])
                        written[1] = written[0]
                    with lock:
                        counts["fetched"] += len(b)
                    if on_bytes:
                        on_bytes(len(b))

                client.read_range(e.path, have, r.size, sink, stop=stop)
                os.fsync(fd)
            if proof.ok():
                break
            client.stats.add(rejected=r.size)
            if on_bytes:
                on_bytes(-r.size)
            part.unlink()
            if attempt == 2:
                raise MirrorError(
                    f"{final}: the mirror served bytes whose hash is {proof.digest()}, not its "
                    f"published {r.proof}, twice; nothing kept (rerun later, or use the swarm: "
                    f"--source swarm)")
            with lock:
                refetched.append(e.path)
            say(f"{e.path}: hash mismatch ({proof.digest()}, published {r.proof}); "
                "fetching it again")
        _check_structure(e, part, final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        fsync_dir(final.parent)
        journal.record(e.path, final, digest)
        if proof.pin is not None:
            # stat after the rename (which changes ctime): the pin pass compares it
            st = os.stat(final)
            with lock:
                streamed[e.path] = (stat_key(st), proof.pin.finish())
        client.stats.add(proven=r.size)
        with lock:
            counts["proven"] += r.size

    # Large files first: the run ends when its longest file does.
    todo = sorted(pairs, key=lambda p: -p[1].size)
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="mirror") as pool:
        futures = [pool.submit(fetch_one, e, r) for e, r in todo]
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise _OutOfTime
                _, pending = wait(futures, timeout=left, return_when=FIRST_EXCEPTION)
                if not pending or any(fu.done() and not fu.cancelled() and fu.exception()
                                      for fu in futures):
                    break
            for fu in futures:
                fu.result()
        except BaseException as exc:
            stop.set()  # the workers stop at their next block or retry pause
            for fu in futures:
                fu.cancel()
            first = next((fu.exception() for fu in futures if fu.done() and not fu.cancelled()
                          and fu.exception() is not None
                          and not isinstance(fu.exception(), _Stopped)), None)
            if first is not None:
                raise first from None
            if isinstance(exc, _OutOfTime):
                took = timeout if timeout is not None else time.monotonic() - t0
                raise _out_of_time(client, took, counts, pairs, time.monotonic() - t0) from None
            raise
    return FilesResult(root=root, files=len(pairs), wanted=sum(r.size for _, r in pairs),
                       fetched=counts["fetched"], proven=counts["proven"], kept=counts["kept"],
                       refetched=refetched, elapsed=time.monotonic() - t0,
                       commit=client.resolve_commit(), streamed=streamed)


def _out_of_time(client: HubClient, timeout: float, counts: dict[str, int],
                 pairs: Sequence[tuple[Any, RemoteFile]], fetching: float) -> TorrentError:
    """--timeout in file mode: how far it got, and what the mirror last said."""
    wanted = sum(r.size for _, r in pairs)
    done = counts["proven"] + counts["kept"]
    st = client.stats.snapshot()
    why = (f"the mirror last answered HTTP {st['last_status']}" if st["last_status"]
           else f"the mirror sent {counts['fetched'] / max(fetching, 1e-3) / 1e6:.1f} MB/s")
    return TorrentError(
        f"mirror {client.where}: not complete after {timeout:.0f} s ({done:,} of {wanted:,} "
        f"bytes proven, {counts['fetched']:,} received; {why}); the partial files stay in "
        f"the state folder: rerun to continue")


def _already_there(final: Path, r: RemoteFile) -> bool:
    """A file at its final name, of the right size, whose hash is the published one."""
    try:
        if not final.is_file() or final.stat().st_size != r.size:
            return False
    except OSError:
        return False
    proof = _Proof(r)
    with open(final, "rb") as f:
        while b := f.read(8 << 20):
            proof.update(b)
    return proof.ok()


class _Stopped(Exception):
    """Another file failed: the remaining workers stop (their part files stay for the rerun)."""


class _OutOfTime(Exception):
    """The deadline (--timeout) passed: every worker stops, the part files stay."""


def _resume_part(part: Path, size: int, proof: _Proof) -> int:
    """Hash what an earlier run left in ``part``; return how many bytes to keep."""
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        return 0
    if have > size:
        part.unlink()
        return 0
    with open(part, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                break
            proof.update(b)
    return have


def _check_structure(e: Any, part: Path, final: Path) -> None:
    """A proven tensor file must still be a well-formed checkpoint file of the right shape."""
    from grokfetch.integrity.verify import _spec_from_entry

    spec = _spec_from_entry(e, 0)
    if spec is None:
        return
    # Imported only for a file with arrays to check: the reader's dtypes import
    # ml_dtypes, measured at 1.4 s of CPU, which holds the GIL (every download
    # thread waits) and is wasted on a file without a layout.
    from grokfetch.errors import CheckpointFormatError
    from grokfetch.format.checkpoint import compare
    from grokfetch.format.pickle_reader import scan

    try:
        problems = compare(spec, scan(part))
    except CheckpointFormatError as err:
        raise CheckpointFormatError(final, err.offset, err.what) from None
    if problems:
        raise CheckpointFormatError(final, None, "; ".join(problems))


# --------------------------------------------------------------------------- pin


MIRROR_ROOT_KIND = "mirror-sha256"


def mirror_root(client: HubClient) -> PinRoot:
    """The root of trust a mirror-proven folder's pin records: the repo at one commit."""
    rev = client.resolve_commit()
    return PinRoot(MIRROR_ROOT_KIND, rev, f"{client.spec.repo} on {client.endpoint}", now())


def root_text(root: PinRoot) -> str:
    """How the report names it: 'proven by the mirror's SHA-256 (repo at rev, endpoint)'."""
    return f"proven by the mirror's SHA-256 ({root.label} at {root.id})"


def pin_mirrored(root: Path, manifest: Any, pairs: Iterable[tuple[Any, RemoteFile]],
                 client: HubClient,
                 streamed: dict[str, tuple[StatKey, FileDigests]] | None = None) -> Path:
    """Pin a folder the mirror's hashes proved, and record that root in the pin.

    The mirror's SHA-256 of every file goes into the manifest the pin pass checks
    against.  ``streamed`` (``FilesResult.streamed``) holds the digests this run
    computed of each file as it downloaded it, SHA-256 included: a file whose stat
    is still what it was once proven is pinned from them without being read
    again.  Any other file (proven by an earlier run, or changed since) is read,
    its BLAKE3 computed in the same read that checks its SHA-256: a file that
    changed since it was streamed is refused (PinRefused), never pinned.
    """
    from grokfetch.integrity.verify import pin

    published = {e.path: r for e, r in pairs}
    files = [
        replace(e, sha256=published[e.path].sha256 or e.sha256,
                sha256_source=client.file_url(e.path) if published[e.path].sha256 else None)
        if e.path in published else e
        for e in manifest.files
    ]
    return pin(root, manifest=manifest.with_files(files), manifest_root=mirror_root(client),
               streamed=streamed).path


# --------------------------------------------------------------------------- get


@dataclass(frozen=True)
class MirrorOptions:
    """The CLI's --mirror / --max-mirror-connections, and HF_TOKEN."""

    endpoint: str | None = None  # None: HF_ENDPOINT, else the Hub
    token: str | None = None  # None: huggingface_hub's token (HF_TOKEN or the stored login)
    max_connections: int = MAX_CONNECTIONS
    jobs: int = 0  # files fetched at a time in file mode (0: --max-mirror-connections)


def mirror_spec(manifest: Any) -> MirrorSpec | None:
    """The first Hugging Face mirror the manifest names, if any."""
    for m in getattr(getattr(manifest, "sources", None), "mirrors", None) or []:
        return MirrorSpec(repo=m["repo"], revision=m.get("revision") or "main",
                          folder=m.get("folder", "ckpt-0"))
    return None


def client_for(manifest: Any, opts: MirrorOptions) -> HubClient:
    spec = mirror_spec(manifest)
    if spec is None:
        name = getattr(manifest, "name", "this checkpoint")
        raise UsageError(f"manifest {name} names no mirror (sources.mirrors); use --source swarm")
    token = opts.token if opts.token is not None else hub_token()
    return HubClient(endpoint_from(opts.endpoint), spec, token, opts.max_connections)


@dataclass(frozen=True)
class MirrorGetResult:
    """What ``get --source mirror`` (or auto without metadata) did; the CLI prints it."""

    dest: Path
    root: Path
    files: int
    wanted: int
    downloaded: int  # bytes read from the mirror in this run
    proven: int  # bytes whose SHA-256 matched in this run
    kept: int  # bytes an earlier run had proven
    refetched: list[str]
    elapsed: float
    complete: bool
    manifest_path: Path | None
    root_of_trust: str
    mirror: dict[str, Any]
    source: str = "mirror"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("dest", "root", "manifest_path"):
            d[k] = None if d[k] is None else str(d[k])
        return d


def get_from_mirror(
    manifest: Any,
    dest: Path,
    state_dir: Path,
    opts: MirrorOptions,
    *,
    include: Sequence[str] = (),
    layers: str | None = None,
    space_check: bool = True,
    pin: bool = True,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    on_message: Callable[[str], None] | None = None,
    client: HubClient | None = None,
    timeout: float | None = None,
    started: float | None = None,
) -> MirrorGetResult:
    """Download the manifest's files from its mirror into ``dest`` (the checkpoint root).

    Needs no torrent metadata: each file is proven by the SHA-256 the mirror
    publishes, after those values passed the self-test against the manifest.
    ``progress(done, wanted, mirror_stats)`` is called as bytes arrive.
    ``timeout`` (--timeout, seconds from ``started``, a time.monotonic(); default
    now): TorrentError when the files are not all proven by then.
    """
    from grokfetch.fetch.torrent import check_space
    from grokfetch.format import metainfo

    say = on_message or (lambda _m: None)
    client = client or client_for(manifest, opts)
    t0 = time.monotonic()
    deadline = None if timeout is None else (t0 if started is None else started) + timeout
    remote = client.list_files()
    pairs = check_published_hashes(remote, manifest, client.spec, client)
    packaged = sum(1 for e, r in pairs if e.sha256 and r.sha256)
    say(f"mirror {client.where}: {len(remote)} files listed; the {packaged} SHA-256 values the "
        f"manifest packages agree with the mirror's")
    outside = [e for e in manifest.files if e.path not in {p.path for p, _ in pairs}]
    for e in outside:
        say(f"not in the mirror folder {client.spec.folder}/, skipped: {e.path}")
    pseudo = metainfo.TorrentMeta(
        name=manifest.name, info_hash="", piece_length=0, num_pieces=0,
        total_size=sum(r.size for _, r in pairs),
        files=tuple(metainfo.TorrentFile(i, e.path, e.size, False)
                    for i, (e, _) in enumerate(pairs)))
    layer_paths = (metainfo.manifest_paths_for_layers(manifest, layers)
                   if layers is not None else None)
    chosen = {f.path for f in metainfo.select_files(pseudo, None, include, layer_paths)}
    todo = [(e, r) for e, r in pairs if e.path in chosen]
    wanted = sum(r.size for _, r in todo)
    if space_check:
        check_space(dest, [f for f in pseudo.files if f.path in chosen])
    say(f"{manifest.name}: {len(todo)} of {len(manifest.files)} files, {wanted:,} bytes, "
        f"from the mirror, each proven by its published hash")
    done = [0]
    lock = threading.Lock()
    last = [0.0]

    def on_bytes(n: int) -> None:
        with lock:
            done[0] += n
            now = time.monotonic()
            if progress is None or now - last[0] < 0.2:
                return
            last[0] = now
        progress(done[0], wanted, client.stats.snapshot())

    complete = len(todo) == len(manifest.files)
    res = download_files(client, dest, state_dir, todo, jobs=opts.jobs or opts.max_connections,
                         on_bytes=on_bytes, on_message=say, deadline=deadline, timeout=timeout,
                         chunk_size=manifest.chunk_size if pin and complete else None)
    if progress is not None:
        progress(wanted, wanted, client.stats.snapshot())
    manifest_path = None
    if pin and complete:
        manifest_path = pin_mirrored(dest, manifest, pairs, client, res.streamed)
        if manifest_path is not None:
            say(f"pinned manifest: {manifest_path} (proven by the mirror's SHA-256)")
    elif pin:
        say("partial download (--layers/--include, or files outside the mirror folder): "
            "the manifest is not pinned")
    return MirrorGetResult(
        dest=dest, root=dest, files=len(todo), wanted=wanted, downloaded=res.fetched,
        proven=res.proven, kept=res.kept, refetched=res.refetched,
        elapsed=time.monotonic() - t0, complete=complete, manifest_path=manifest_path,
        root_of_trust=root_text(mirror_root(client)), mirror=client.stats.snapshot())
