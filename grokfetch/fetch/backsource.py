"""Back-to-source for ``get``: the swarm first, the mirror for what the swarm cannot give.

``torrent.download`` runs the libtorrent session; a ``BackSource`` rides
along through a few hooks in its loop (``on_alert``, ``tick``, ``idle``) and
adds, without trusting the mirror with anything:

* **metadata without peers**: the published .torrent is fetched over HTTP(S)
  at the same time as peers are asked; whichever comes first wins.  The file
  is accepted only if the SHA-1 of its raw bencoded ``info`` value, sliced
  from the downloaded bytes and never re-encoded, is the magnet's info-hash
  (the site that serves it rewrites the rest of the file, injecting web-seed
  URLs; those are dropped because only the info dict is handed to libtorrent);
* **pieces from the mirror** (``PieceFeeder``): pieces no connected peer has,
  or, while the swarm is slow, pieces no peer is downloading, are read from
  the mirror with HTTP Range requests (a piece may span several files) and
  given whole to libtorrent with ``add_piece``, which checks their SHA-1
  against the torrent and then seeds them like any other piece;
* **a status line** before the metadata (peers, DHT nodes, trackers
  answering or not, the size the manifest promises), and the reason a
  ``--timeout`` stopped the run;
* the decision to give up on metadata and fetch whole files from the mirror
  (``FallBackToFiles``) when neither peers nor the torrent URL answered in
  time.

What libtorrent 2.1's ``add_piece`` does, which the feeder is built around:
it is asynchronous and hashes the piece (``piece_finished_alert`` or
``hash_failed_alert``); it silently ignores data of the wrong size, a piece
already had, and any call while the torrent is checking or once it is a
seed, so a piece counts only when ``have_piece`` says so; its
``overwrite_existing`` flag can replace a verified piece with bad data
without a word, so it is never passed.  A piece's priority is set to 0 while
it is fetched over HTTP, which keeps peers from requesting it; each call
copies the piece twice, so only a few pieces are in flight.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import libtorrent as lt

from grokfetch.errors import TorrentError
from grokfetch.fetch.mirror import HubClient, MirrorError
from grokfetch.format import metainfo
from grokfetch.fsutil import check_free_space
from grokfetch.units import format_bytes

PIECES_IN_FLIGHT = 4  # each 16 MiB piece costs two copies inside add_piece
CONFIRM_WAIT = 30.0  # seconds for add_piece's verdict before the piece is fetched again
PIECE_TRIES = 3  # a piece the mirror serves wrong this often stops the run
SLOW_SWARM = 16 << 20  # bytes/s: below this the mirror also takes pieces peers are not fetching
RATE_WINDOW = 5.0  # seconds over which per-source rates are measured
STATUS_EVERY = 10.0  # seconds between status lines while waiting for metadata
TORRENT_URL_TIMEOUT = 30.0
MAX_TORRENT_BYTES = 64 << 20


_FEEDABLE = (lt.torrent_status.states.downloading, lt.torrent_status.states.finished)


class FallBackToFiles(Exception):
    """No metadata in time: continue with whole files from the mirror."""


# --------------------------------------------------------------------------- .torrent URL


def fetch_torrent_info(url: str, info_hash: str, timeout: float = TORRENT_URL_TIMEOUT) -> bytes:
    """The raw bencoded info dict of the .torrent at ``url``, proven to be ``info_hash``.

    TorrentError (exit 4) if the file's info dict is not the magnet's;
    OSError-like failures (unreachable, HTTP errors) raise MirrorError.
    """
    req = urllib.request.Request(url, headers={"User-Agent": "grokfetch"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read(MAX_TORRENT_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise MirrorError(f"{url}: HTTP {e.code}", e.code) from None
    except (OSError, ValueError) as e:
        raise MirrorError(f"{url}: unreachable ({getattr(e, 'reason', e)})") from None
    if len(data) > MAX_TORRENT_BYTES:
        raise TorrentError(f"{url}: more than {MAX_TORRENT_BYTES} bytes: not a .torrent")
    info = metainfo.raw_info_slice(data, url)
    got = metainfo.info_hash_of_info(info)
    if got != info_hash.lower():
        raise TorrentError(
            f"{url}: the torrent's info dict hashes to {got}, not the magnet's {info_hash}: "
            "refused (a different or tampered torrent)")
    return info


class _TorrentUrl:
    """The .torrent fetch running beside the swarm (a daemon thread)."""

    def __init__(self, url: str, info_hash: str) -> None:
        self.url = url
        self.info: bytes | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(info_hash,), daemon=True).start()

    def _run(self, info_hash: str) -> None:
        try:
            self.info = fetch_torrent_info(self.url, info_hash)
        except BaseException as e:  # reported by the loop, in the main thread
            self.error = e
        finally:
            self.done.set()


# --------------------------------------------------------------------------- rates


class _Rate:
    """Bytes per second over the last RATE_WINDOW seconds."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> None:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()

    def rate(self) -> int:
        if len(self.samples) < 2:
            return 0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return int((b1 - b0) / (t1 - t0)) if t1 > t0 else 0


# --------------------------------------------------------------------------- pieces


@dataclass
class _InFlight:
    piece: int
    future: Future[bytearray] | None
    tries: int
    added_at: float = 0.0  # when add_piece was called (0: still fetching)


class PieceFeeder:
    """Feeds pieces read from the mirror to libtorrent (see the module docstring)."""

    def __init__(self, h: Any, ti: Any, client: HubClient, chosen: list[metainfo.TorrentFile],
                 root: str, say: Callable[[str], None], in_flight: int = PIECES_IN_FLIGHT,
                 slow_swarm: int = SLOW_SWARM) -> None:
        self.h = h
        self.ti = ti
        self.client = client
        self.say = say
        # Bounded by bytes as much as by count: a few 16 MiB pieces, more small ones.
        self.max_in_flight = max(1, min(32, max(in_flight, (64 << 20) // ti.piece_length())))
        self.slow_swarm = slow_swarm
        self.fs = metainfo.file_layout(ti)
        prefix = root.rstrip("/") + "/" if root else ""
        # Repository path of each torrent file: its path below the checkpoint root.
        self.repo_path: dict[int, str | None] = {}
        for i in range(self.fs.num_files()):
            p = self.fs.file_path(i).replace("\\", "/")
            self.repo_path[i] = p[len(prefix):] if p.startswith(prefix) else None
        self.wanted: set[int] = set()
        for f in chosen:
            if f.size == 0:
                continue
            first = self.fs.file_offset(f.index) // ti.piece_length()
            last = (self.fs.file_offset(f.index) + f.size - 1) // ti.piece_length()
            self.wanted.update(range(first, last + 1))
        self.unfeedable = {p for p in self.wanted if not self._feedable(p)}
        self.flight: dict[int, _InFlight] = {}
        self.tries: dict[int, int] = {}
        self.pool = ThreadPoolExecutor(max_workers=self.max_in_flight,
                                       thread_name_prefix="mirror-piece")
        self.proven = 0
        self.rate = _Rate()
        self.failed_error: BaseException | None = None
        self.last_schedule = 0.0

    def _feedable(self, piece: int) -> bool:
        for s in self.ti.map_block(piece, 0, self.ti.piece_size(piece)):
            pad = self.fs.file_flags(s.file_index) & lt.file_storage.flag_pad_file
            if not pad and self.repo_path.get(s.file_index) is None:
                return False
        return True

    # -- the worker side -------------------------------------------------------------

    def _fetch(self, piece: int) -> bytearray:
        """The piece's bytes: the concatenation of each file's bytes at the piece's offsets."""
        size = self.ti.piece_size(piece)
        buf = bytearray(size)
        view = memoryview(buf)
        pos = 0
        for s in self.ti.map_block(piece, 0, size):
            if self.fs.file_flags(s.file_index) & lt.file_storage.flag_pad_file:
                pos += s.size  # pad files are zeros
                continue
            path = self.repo_path[s.file_index]
            assert path is not None
            at = [pos]

            def sink(b: memoryview, at: list[int] = at) -> None:
                view[at[0]: at[0] + len(b)] = b
                at[0] += len(b)

            self.client.read_range(path, s.offset, s.offset + s.size, sink)
            pos += s.size
        return buf

    # -- the loop side (main thread) -------------------------------------------------

    def on_alert(self, a: Any) -> None:
        if isinstance(a, lt.hash_failed_alert) and a.piece_index in self.flight:
            fl = self.flight.pop(a.piece_index)
            self._failed(fl, "failed its SHA-1 check")

    def _failed(self, fl: _InFlight, why: str) -> None:
        size = self.ti.piece_size(fl.piece)
        self.client.stats.add(rejected=size)
        from grokfetch.fetch.torrent import piece_files

        where = piece_files(self.ti, fl.piece)
        if fl.tries >= PIECE_TRIES:
            self._give_up(MirrorError(
                f"piece {fl.piece} ({where}) from the mirror {self.client.where} {why} "
                f"{fl.tries} times; nothing of it was kept (rerun, or --source swarm)"))
            return
        self.tries[fl.piece] = fl.tries
        self.say(f"piece {fl.piece} from the mirror {why} ({where}); fetching it again")
        with contextlib.suppress(Exception):
            self.h.piece_priority(fl.piece, 4)  # back to the swarm meanwhile

    def idle(self) -> bool:
        return not self.flight

    def _give_up(self, err: BaseException) -> None:
        """The mirror failed for good: hand every piece back to the swarm."""
        self.failed_error = err
        for p in list(self.flight):
            with contextlib.suppress(Exception):
                self.h.piece_priority(p, 4)
        self.flight.clear()
        self.say(f"{err}; continuing with the swarm only")

    def tick(self, st: Any, now: float, swarm_rate: int) -> None:
        if self.failed_error is not None:
            if st.num_peers == 0 and not st.is_seeding:
                raise self.failed_error  # nobody else can finish it: say why now
            return
        # add_piece is ignored while checking and once the torrent is a seed.
        # ("finished" is fine: every piece at priority > 0 is there, and the
        # ones parked at 0 for the mirror are not yet.)
        feedable = st.state in _FEEDABLE and not st.is_seeding
        if st.state not in _FEEDABLE and not st.is_seeding:
            return  # checking: st.pieces means nothing yet
        have = st.pieces
        for p, fl in list(self.flight.items()):
            if fl.added_at == 0.0 and not feedable:
                if have[p]:
                    self.flight.pop(p)  # a seed now: a peer supplied it meanwhile
                continue
            if fl.added_at == 0.0:
                assert fl.future is not None
                if not fl.future.done():
                    continue
                err = fl.future.exception()
                if err is not None:
                    self._give_up(err)
                    break
                data = fl.future.result()
                fl.future = None
                if have[p]:  # a peer was quicker after all
                    self.flight.pop(p)
                    continue
                self.h.add_piece(p, bytes(data), 0)  # never overwrite_existing
                fl.added_at = now
            elif have[p]:
                self.flight.pop(p)
                self.proven += self.ti.piece_size(p)
                self.client.stats.add(proven=self.ti.piece_size(p))
                with contextlib.suppress(Exception):
                    self.h.piece_priority(p, 4)
            elif now - fl.added_at > CONFIRM_WAIT:
                self.flight.pop(p)
                self._failed(fl, "was not confirmed by libtorrent")
        self.rate.add(now, self.proven)
        if feedable and self._room() > 0 and now - self.last_schedule >= 0.05:
            self.last_schedule = now
            self._schedule(have, swarm_rate)

    def _room(self) -> int:
        """How many more pieces may be fetched now.  Up to ``max_in_flight`` are read
        over HTTP at a time, and as many more may wait for add_piece's verdict (their
        bytes are libtorrent's by then): the next fetch starts while libtorrent still
        hashes and writes the last one, so the connections never wait on it."""
        fetching = sum(1 for fl in self.flight.values() if fl.added_at == 0.0)
        return min(self.max_in_flight - fetching, 2 * self.max_in_flight - len(self.flight))

    def _schedule(self, have: Any, swarm_rate: int) -> None:
        missing = [p for p in self.wanted
                   if not have[p] and p not in self.flight and p not in self.unfeedable]
        if not missing:
            return
        avail = self.h.piece_availability()
        busy = {int(d["piece_index"]) for d in self.h.get_download_queue()}
        nobody = [p for p in missing if avail[p] == 0 and p not in busy]
        pick = sorted(nobody)
        if swarm_rate < self.slow_swarm:
            # A slow swarm: also take pieces peers have but are not fetching, from
            # the far end, away from where libtorrent is working.
            pick += sorted((p for p in missing if avail[p] > 0 and p not in busy), reverse=True)
        for p in pick[: self._room()]:
            self.h.piece_priority(p, 0)  # keep peers off it while HTTP fetches it
            tries = self.tries.get(p, 0) + 1
            self.flight[p] = _InFlight(p, self.pool.submit(self._fetch, p), tries)

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- coordinator


class BackSource:
    """What ``torrent.download``'s loop asks: status, metadata from the URL, mirror pieces."""

    def __init__(self, mode: str, info_hash: str, manifest: Any, client: HubClient | None,
                 torrent_url: str | None, metadata_timeout: float,
                 say: Callable[[str], None]) -> None:
        self.mode = mode  # auto | swarm
        self.info_hash = info_hash
        self.manifest = manifest
        self.client = client
        self.say = say
        self.metadata_timeout = metadata_timeout
        self.url = _TorrentUrl(torrent_url, info_hash) if torrent_url else None
        self.url_reported = False
        self.metadata_from: str | None = None
        self.feeder: PieceFeeder | None = None
        self.trackers: dict[str, str | None] = {}  # url -> last error (None: answered)
        self.last_status = 0.0
        self.swarm = _Rate()
        self.started = time.monotonic()
        self.expected_total = getattr(manifest, "total_size", 0) if manifest is not None else 0

    # -- alerts ----------------------------------------------------------------------

    def on_alert(self, a: Any) -> bool:
        """Handle an alert; True when it was a tracker alert (summarised, not printed)."""
        if isinstance(a, lt.tracker_error_alert):
            self.trackers[a.tracker_url()] = a.error_message() or a.error.message()
            return True
        if isinstance(a, lt.tracker_reply_alert):
            self.trackers[a.tracker_url()] = None
            return True
        if self.feeder is not None:
            self.feeder.on_alert(a)
        return False

    def tracker_text(self) -> str:
        if not self.trackers:
            return "no tracker answered yet"
        ok = [u for u, e in self.trackers.items() if e is None]
        bad = {u: e for u, e in self.trackers.items() if e is not None}
        text = f"{len(ok)} of {len(self.trackers)} trackers answering"
        if bad:
            text += " (unreachable: " + "; ".join(
                f"{_host(u)}: {e}" for u, e in list(bad.items())[:4]) + ")"
        return text

    # -- the loop --------------------------------------------------------------------

    def before_metadata(self, ses: Any, h: Any, st: Any, now: float) -> str:
        """Called each loop turn until metadata is known; returns the status text."""
        if self.url is not None and self.url.done.is_set() and not self.url_reported:
            self.url_reported = True
            if self.url.info is not None:
                h.set_metadata(self.url.info)
                self.metadata_from = self.url.url
                self.say(f"metadata from {self.url.url} (its info dict hashes to the magnet's "
                         f"info-hash; web seeds it lists are ignored)")
            elif isinstance(self.url.error, TorrentError) and not isinstance(
                    self.url.error, MirrorError):
                raise self.url.error
            else:
                self.say(f"torrent URL: {self.url.error}; waiting for peers")
        text = self.status_text(ses, st, now)
        if now - self.last_status >= STATUS_EVERY:
            self.last_status = now
            self.say(f"waiting for metadata: {text}")
        if (self.mode == "auto" and self.client is not None and self.metadata_from is None
                and now - self.started >= self.metadata_timeout
                and (self.url is None or self.url_reported)):
            self.say(f"no metadata after {now - self.started:.0f} s ({text}): "
                     f"fetching whole files from the mirror {self.client.where}")
            raise FallBackToFiles()
        return text

    def status_text(self, ses: Any, st: Any, now: float) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            nodes = int(getattr(ses.status(), "dht_nodes", 0))
        size = f", {self.expected_total:,} bytes per the manifest" if self.expected_total else ""
        return (f"{now - self.started:.0f} s, {st.num_peers} peers, {nodes} DHT nodes, "
                f"{self.tracker_text()}{size}")

    def start_pieces(self, h: Any, ti: Any, chosen: list[metainfo.TorrentFile],
                     root: str) -> None:
        if self.mode != "auto" or self.client is None or self.feeder is not None:
            return
        self.feeder = PieceFeeder(h, ti, self.client, chosen, root, self.say)
        if self.feeder.unfeedable:
            self.say(f"{len(self.feeder.unfeedable)} pieces lie in files the mirror does not "
                     "hold: only peers can supply them")

    def tick(self, st: Any, now: float) -> None:
        self.swarm.add(now, st.total_payload_download)
        if self.feeder is not None:
            self.feeder.tick(st, now, self.swarm.rate())

    def idle(self) -> bool:
        return self.feeder is None or self.feeder.idle()

    def wait_ms(self) -> int:
        """How long the loop may sleep: briefly while HTTP fetches finish off the loop."""
        return 10 if self.feeder is not None and not self.feeder.idle() else 200

    def sources(self) -> dict[str, Any]:
        """Per-source counts and rates (the --json-progress ``sources`` field)."""
        stats = self.client.stats.snapshot() if self.client is not None else {}
        return {
            "swarm_rate": self.swarm.rate(),
            "mirror_rate": self.feeder.rate.rate() if self.feeder is not None else 0,
            "mirror_proven": stats.get("proven", 0),
            "mirror_received": stats.get("received", 0),
            "mirror_rejected": stats.get("rejected", 0),
            "mirror_in_flight": len(self.feeder.flight) if self.feeder is not None else 0,
            "mirror_last_status": stats.get("last_status"),
        }

    def why_stopped(self, ses: Any, st: Any, now: float, has_meta: bool) -> str:
        """The reason part of a --timeout message."""
        if not has_meta:
            why = "no metadata: " + ("no peers found" if st.num_peers == 0 else
                                     f"{st.num_peers} peers sent none")
            why += f"; {self.status_text(ses, st, now)}"
            if self.url is not None and self.url.error is not None:
                why += f"; torrent URL: {self.url.error}"
            return why
        s = self.sources()
        why = (f"{st.num_peers} peers, swarm {format_bytes(s['swarm_rate'])}/s; mirror "
               f"{s['mirror_proven']:,} bytes proven")
        if s["mirror_last_status"] is not None:
            why += f" (last HTTP status {s['mirror_last_status']})"
        if st.num_peers == 0:
            why += f"; {self.tracker_text()}"
        return why

    def stop(self) -> None:
        if self.feeder is not None:
            self.feeder.stop()


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or url


# --------------------------------------------------------------------------- wiring


def make(mode: str, info_hash: str, manifest: Any, opts: Any, metadata_timeout: float,
         need_metadata: bool, say: Callable[[str], None]) -> BackSource:
    """The BackSource for a download: the mirror only in auto mode and when the
    manifest names one; the torrent URL only while the metadata is unknown and
    the manifest is this torrent's."""
    from grokfetch.fetch.mirror import MirrorOptions, client_for, mirror_spec

    client = None
    if mode == "auto" and manifest is not None and mirror_spec(manifest) is not None:
        client = client_for(manifest, opts or MirrorOptions())
    src = getattr(manifest, "sources", None)
    ih = (getattr(src, "info_hash", None) or "").lower()
    url: str | None = getattr(src, "torrent_url", None)
    if not need_metadata or ih not in ("", info_hash.lower()):
        url = None
    return BackSource(mode, info_hash, manifest, client, url, metadata_timeout, say)


def check_space_from_manifest(dest: Any, manifest: Any, layers: str | None) -> None:
    """Before the metadata: the manifest's sizes of what is selected must fit."""
    from grokfetch.fetch.torrent import SPACE_ADVICE, free_space

    if manifest is None:
        return
    paths = set(metainfo.manifest_paths_for_layers(manifest, layers)) if layers else None
    need = sum(f.size for f in manifest.files if paths is None or f.path in paths)
    check_free_space(dest, need, free_space(dest), what="to download (the manifest's sizes)",
                     advice=SPACE_ADVICE.format(choose="--layers"))


def files_from_mirror(manifest: Any, dest: Any, state_dir: Any, opts: Any, *,
                      include: Any = (), layers: str | None = None, space_check: bool = True,
                      pin: bool = True, on_progress: Callable[[Any], None] | None = None,
                      on_message: Callable[[str], None] | None = None,
                      client: HubClient | None = None, started: float | None = None,
                      timeout: float | None = None) -> Any:
    """``get --source mirror`` (and auto without metadata): mirror.get_from_mirror, with
    its progress as torrent.Progress snapshots.  ``timeout`` (--timeout) counts from
    ``started`` (the start of the run, before the wait for metadata) when given."""
    from grokfetch.errors import UsageError
    from grokfetch.fetch.mirror import MirrorOptions, get_from_mirror
    from grokfetch.fetch.torrent import Progress

    if manifest is None:
        raise UsageError("the mirror needs a manifest (a model name like grok-1, or --manifest)")
    t0 = started if started is not None else time.monotonic()
    rate = _Rate()

    def progress(done: int, wanted: int, stats: dict[str, Any]) -> None:
        if on_progress is None:
            return
        now = time.monotonic()
        rate.add(now, stats.get("received", 0))
        r = rate.rate()
        on_progress(Progress(
            state="downloading" if done < wanted else "done", wanted=wanted,
            wanted_done=max(0, done), downloaded=stats.get("received", 0), uploaded=0,
            download_rate=r, upload_rate=0, peers=0, seeds=0, elapsed=round(now - t0, 3),
            resume_saved_done=-1, expected=wanted, status="whole files from the mirror",
            sources={"swarm_rate": 0, "mirror_rate": r,
                     "mirror_proven": stats.get("proven", 0),
                     "mirror_received": stats.get("received", 0),
                     "mirror_rejected": stats.get("rejected", 0),
                     "mirror_last_status": stats.get("last_status")}))

    return get_from_mirror(manifest, dest, state_dir, opts or MirrorOptions(), include=include,
                           layers=layers, space_check=space_check, pin=pin, progress=progress,
                           on_message=on_message, client=client,
                           timeout=timeout, started=t0)
