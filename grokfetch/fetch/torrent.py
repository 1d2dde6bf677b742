"""The libtorrent client behind ``grokfetch get`` and ``grokfetch seed``.

A library, not a CLI: ``download()`` and ``Seeder`` report through callbacks
(``on_progress`` gets a frozen ``Progress`` snapshot, ``on_message`` a line of
text) and return frozen dataclasses; ``grokfetch.cli.get`` renders them.

What libtorrent 2.1 does on its own and what this module adds (measured, see
issue 4):

* Completion is decided from status (``total_wanted_done == total_wanted > 0``
  once checking is over), never from the first ``torrent_finished_alert``:
  choosing files after a magnet's metadata arrives makes the torrent briefly
  "finished", and libtorrent would close the seed as redundant, so
  ``close_redundant_connections`` is off too.
* Resume data is trusted blindly by libtorrent: it is saved periodically and
  on every exit, and a marker file tells the next run whether this one ended
  cleanly.  After a crash the data on disk is rechecked, which keeps every
  good piece; ``repair=True`` rechecks on request and re-fetches bad pieces.
* A full disk does not stop a torrent; it shows up as ``file_error_alert``
  (ENOSPC) plus the ``upload_mode`` flag.  Both end the run with DiskError
  after pausing and saving state; the rerun clears ``upload_mode``.
* Magnets are added with ``default_dont_download`` so that nothing is written
  until the metadata has been checked (paths, manifest, free space).
* A piece passes its hash check while still in libtorrent's store buffer:
  the disk cache is flushed before the files are read back for pinning.
* Local-network peers are exempt from rate limits by default; a limit the
  user sets applies to every peer (tests throttle a loopback seeder with it).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import libtorrent as lt

from grokfetch import __version__, trust
from grokfetch.confine import confined_call
from grokfetch.errors import (
    DiskError,
    GrokfetchError,
    Interrupted,
    PinRefused,
    TorrentError,
    UnsafePathError,
    UsageError,
)
from grokfetch.fetch import backsource
from grokfetch.fetch.fleet import Fleet, FleetStatus, fleet_of
from grokfetch.format import metainfo
from grokfetch.format.folder import SELECTION_MANIFEST, STATE_DIR, locate
from grokfetch.format.manifest import (
    Manifest,
    by_info_hash,
    load_manifest,
    parse_manifest_bytes,
    read_manifest_bytes,
    resolve_manifest,
    save_pin,
)
from grokfetch.format.metainfo import TorrentMeta, make_torrent
from grokfetch.fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    check_free_space,
    free_space,  # a module attribute: the seam tests replace to fake a small disk
    inside,
    lock_dest,
    os_errors_as_disk_errors,
    remove_stale_temps,
)
from grokfetch.progress import ProgressFactory
from grokfetch.units import format_bytes

__all__ = [
    "NetOptions",
    "Progress",
    "DownloadOptions",
    "DownloadResult",
    "SeedInfo",
    "Seeder",
    "download",
    "make_torrent",
    "free_space",
    "session_settings",
]

SAVE_WAIT = 5.0  # seconds to wait for resume data on exit (Ctrl-C must be quick)
FLUSH_WAIT = 600.0  # seconds for the disk to take what libtorrent still buffers
PRIO_WAIT = 30.0  # seconds to wait for file_prio_alert before judging completion anyway
REDIAL_EVERY = 5.0  # seconds between re-dialling --peer addresses while unconnected
TOKENIZER = "tokenizer.model"  # an extra file of the torrent worth fetching with the weights
ALERT_GRACE = 1.0  # seconds to wait for the file_error_alert behind a stopped torrent
STALL_NOTICE = 60.0  # seconds without new verified data before saying why, and again after each

_S = lt.torrent_status.states
_STATE_NAMES = {
    _S.checking_files: "checking",
    _S.checking_resume_data: "checking",
    _S.downloading_metadata: "metadata",
    _S.downloading: "downloading",
    _S.finished: "downloading",  # only "finished" with what is wanted; we decide done ourselves
    _S.seeding: "seeding",
}
if hasattr(_S, "allocating"):
    _STATE_NAMES[_S.allocating] = "checking"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class NetOptions:
    """Networking knobs (the CLI's --listen/--no-dht/--no-utp/--max-*-rate)."""

    listen: str = "0.0.0.0:6881,[::]:6881"
    dht: bool = True  # False also turns off LSD, UPnP, NAT-PMP and the public bootstrap/STUN hosts
    utp: bool = True  # False: TCP only (uTP runs at 10-15 MB/s on loopback, TCP at 160-360)
    max_download_rate: int = 0  # bytes/s, 0 = unlimited
    max_upload_rate: int = 0  # bytes/s, 0 = unlimited


def session_settings(net: NetOptions) -> dict[str, Any]:
    """libtorrent settings for a grokfetch session."""
    cat = lt.alert.category_t
    s: dict[str, Any] = {
        "listen_interfaces": net.listen,
        "user_agent": f"grokfetch/{__version__} libtorrent/{lt.__version__}",
        "alert_mask": (
            cat.error_notification
            | cat.status_notification
            | cat.storage_notification
            | cat.tracker_notification
            # No piece or block progress: one alert per piece (or 16 KiB block)
            # floods the queue, and the alerts dropped could be the file error
            # that says the disk is full.  A piece fed from the mirror is
            # confirmed by status().pieces; its hash_failed_alert is a status alert.
        ),
        # A cluster (or a test) runs many peers behind one address: without this
        # libtorrent refuses the second connection from an IP and nothing moves.
        "allow_multiple_connections_per_ip": True,
        # See the module docstring: a stale "finished" must not drop the seed.
        "close_redundant_connections": False,
        "enable_incoming_utp": net.utp,
        "enable_outgoing_utp": net.utp,
        "download_rate_limit": int(net.max_download_rate),
        "upload_rate_limit": int(net.max_upload_rate),
        # Deeper send buffers keep a fast link (a cluster, loopback) full: the
        # 500 KB default starves a single connection above ~100 MB/s.
        "send_buffer_watermark": 8 << 20,
        "send_buffer_low_watermark": 1 << 20,
        "send_buffer_watermark_factor": 150,
        "max_queued_disk_bytes": 256 << 20,
        "hashing_threads": max(1, min(4, os.cpu_count() or 1)),
        # A peer that dropped is redialled after min_reconnect_time x its fail
        # count (default 60 s): too slow for a cluster seeder that restarts.
        "min_reconnect_time": 5,
        "enable_dht": net.dht,
        "enable_lsd": net.dht,
        "enable_upnp": net.dht,
        "enable_natpmp": net.dht,
    }
    if not net.dht:
        # libtorrent 2.1 ships public defaults for both; a private run contacts nobody.
        s["dht_bootstrap_nodes"] = ""
        s["webtorrent_stun_server"] = ""
    known = lt.default_settings()
    return {k: v for k, v in s.items() if k in known}  # 2.0 lacks some (the STUN server)


def recount_connect_candidates(ses: Any) -> None:
    """Make libtorrent recount which of the peers it knows it may dial.

    libtorrent 2.1 keeps that count (``connect_candidates``) up to date as peers come and
    go, but not when a finished torrent turns back into a download (a recheck that found
    a bad piece): a peer it learned was a seed while both sides were seeds stays counted
    as useless, and nothing is dialled again, the one peer with the missing piece
    included.  Measured here: a seed-to-seed connection, then a flipped byte and a
    recheck left ``list_peers`` 1, ``connect_candidates`` 0 for as long as we waited, in
    5 of 5 rounds; redialling (``connect_peer``) does not clear it.  The count is redone
    whenever ``max_failcount`` changes, so set it to another value and back.
    """
    n = int(ses.get_settings()["max_failcount"])
    ses.apply_settings({"max_failcount": n + 1})
    ses.apply_settings({"max_failcount": n})


def make_session(net: NetOptions, writes_beneath: Path | None = None) -> Any:
    """A session with grokfetch's settings.  ``writes_beneath``: the kernel lets its threads
    write only inside that folder (Landlock, where Linux has it: ``grokfetch.confine``)."""
    params = lt.session_params()
    params.settings = session_settings(net)  # type: ignore[assignment] # a dict works too
    if writes_beneath is None:
        ses = lt.session(params)
    else:
        # unconfined where the kernel lacks Landlock: _check_still_inside is then the guard
        ses, _ = confined_call(lambda: lt.session(params), [writes_beneath])
    if net.max_download_rate or net.max_upload_rate:
        # libtorrent exempts local-network peers from rate limits (the "local"
        # peer class).  A limit the user asks for must hold inside a cluster
        # too, so every address is put in the global class, which the limits govern.
        f = lt.ip_filter()
        f.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                   1 << lt.session.global_peer_class_id)
        ses.set_peer_class_filter(f)
    return ses


def parse_hostport(text: str, what: str = "--peer", allow_zero: bool = False) -> tuple[str, int]:
    """'127.0.0.1:6881' or '[::1]:6881' -> (host, port); UsageError otherwise.

    Port 0 (any free port) only where ``allow_zero`` (a listen address).
    """
    host, sep, port = text.rpartition(":")
    low = 0 if allow_zero else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) < 65536:
        raise UsageError(f"{what} {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


SPACE_ADVICE = "free some space, choose files with {choose}, or pass --no-space-check"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Progress:
    """One snapshot of a running download or seed (also the --json-progress line)."""

    state: str  # metadata | checking | downloading | seeding | paused
    # libtorrent's counters, in whole pieces: the pieces overlapping the selected
    # files (0 until the metadata is known), and how many of those bytes are verified.
    wanted: int
    wanted_done: int
    downloaded: int  # payload bytes received in this run
    uploaded: int  # payload bytes sent in this run
    download_rate: int  # bytes/s
    upload_rate: int  # bytes/s
    peers: int
    seeds: int
    elapsed: float
    resume_saved_done: int  # wanted bytes covered by the last resume data written (-1: none)
    fleet: FleetStatus | None = None  # while seeding: the other nodes, as this one sees them
    # Back-to-source (grokfetch.fetch.backsource): what the manifest says is coming before
    # the metadata, a status line while waiting, per-source counts and rates.
    expected: int = 0
    status: str = ""
    sources: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DownloadResult:
    dest: Path
    root: Path  # checkpoint root (holds ckpt-0/ and the pinned manifest)
    torrent_path: Path  # the .torrent saved in DEST
    info_hash: str
    name: str
    files: int  # number of files selected
    wanted: int  # bytes selected
    downloaded: int  # payload bytes received in this run
    uploaded: int
    failed_bytes: int  # bytes that failed the piece hash check and were fetched again
    elapsed: float
    rechecked: bool  # data on disk was rechecked (crash recovery or --repair)
    complete: bool  # every file of the torrent/manifest was selected and is verified
    manifest_path: Path | None  # pinned manifest, when pinning ran
    magnet: str
    sources: dict[str, Any] | None = None  # per-source counts (backsource.BackSource.sources)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("dest", "root", "torrent_path", "manifest_path"):
            d[k] = None if d[k] is None else str(d[k])
        return d


@dataclass(frozen=True)
class Source:
    """What to download: exactly one of magnet / torrent bytes, plus extra sources."""

    info_hash: str
    magnet: str | None = None
    torrent: bytes | None = None
    what: str = ""  # for messages: the path or a short magnet
    trackers: tuple[str, ...] = ()
    web_seeds: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = ()  # x.pe hints of a magnet


def load_manifest_arg(manifest: Manifest | str | os.PathLike[str] | None) -> Manifest | None:
    """A Manifest object, a path to one, or a packaged name like 'grok-1'."""
    if manifest is None or not isinstance(manifest, (str, os.PathLike)):
        return manifest
    return load_manifest(resolve_manifest(str(manifest)))


def resolve_source(
    source: str | os.PathLike[str] | None, manifest: Any = None
) -> tuple[Source, Any]:
    """Turn MODEL | MAGNET | TORRENT_FILE into a Source, and pick the manifest.

    A model name (or a manifest path) gives both: its ``sources`` provide the
    magnet, trackers and web seeds.  A magnet or .torrent is checked against
    ``manifest`` when one is given, else against the packaged manifest with
    the same info-hash, if any.
    """
    text = "grok-1" if source is None else str(source)
    if metainfo.is_magnet(text):
        mag = metainfo.parse_magnet(text)
        # The magnet's own sources are kept apart: resume data replaces the
        # magnet on a rerun, and its peer hints must still be dialled.
        src = Source(info_hash=mag.info_hash, magnet=text, what=f"magnet {mag.info_hash}",
                     trackers=mag.trackers, web_seeds=mag.web_seeds, peers=mag.peers)
    elif text.endswith(".torrent") or (Path(text).is_file() and not text.endswith(".json")):
        p = Path(text)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise UsageError(f"{p}: cannot read torrent file ({e.strerror})") from None
        _, meta = metainfo.load_torrent_bytes(data, str(p))
        src = Source(info_hash=meta.info_hash, torrent=data, what=str(p))
    else:
        m = load_manifest_arg(text)
        assert m is not None  # text is a str
        magnet = m.sources.magnet
        if not magnet:
            raise UsageError(f"manifest {text!r} names no magnet link in its sources")
        mag = metainfo.parse_magnet(magnet)
        src = Source(
            info_hash=mag.info_hash,
            magnet=magnet,
            what=f"{text} ({mag.info_hash})",
            trackers=tuple(m.sources.trackers),
            web_seeds=tuple(m.sources.web_seeds),
        )
        return src, (load_manifest_arg(manifest) if manifest is not None else m)
    if manifest is not None:
        return src, load_manifest_arg(manifest)
    return src, by_info_hash(src.info_hash)


def pin_checkpoint(root: Path, manifest: Any, torrent_path: Path,
                   progress: ProgressFactory | None = None,
                   outside: dict[int, bytes] | None = None) -> Path:
    """Pin the BLAKE3 manifest after a download (the verify stage's ``pin``).

    The pin pass reads every byte once and checks it against the torrent's SHA-1
    pieces as it hashes it: what libtorrent's resume data claims is never taken
    on trust.  Raises PinRefused naming the file and piece that fail.
    """
    from grokfetch.integrity import verify

    return verify.pin(root, base=manifest, torrent=torrent_path, progress=progress,
                      outside=outside).path


# --------------------------------------------------------------------------- helpers


def _torrent_file_name(meta: TorrentMeta) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in meta.name).strip("._")
    return f"{safe or meta.info_hash}.torrent"


def _on_disk(path: Path, size: int) -> int:
    """Bytes of a (possibly sparse) file already allocated on disk, at most ``size``."""
    try:
        st = path.stat()
    except OSError:
        return 0
    return min(size, st.st_blocks * 512, st.st_size)


def space_needed(dest: Path, chosen: Iterable[metainfo.TorrentFile]) -> int:
    """What the selected files still need on disk (sparse files: the blocks not yet written)."""
    return sum(max(0, f.size - _on_disk(dest / f.path, f.size)) for f in chosen)


def check_space(dest: Path, chosen: Sequence[metainfo.TorrentFile]) -> int:
    need = space_needed(dest, chosen)
    check_free_space(dest, need, free_space(dest), what="still to download",
                     advice=SPACE_ADVICE.format(choose="--layers/--include"))
    return need


def _listen_text(ses: Any, net: NetOptions) -> str:
    host = parse_hostport(net.listen.split(",")[0], "--listen", allow_zero=True)[0]
    return f"{host}:{ses.listen_port()}"


def default_route_address() -> str | None:
    """The IPv4 address of the interface holding the default route, or None.

    A UDP socket "connected" to an address beyond the default route makes the
    kernel choose the source address it would use; nothing is sent.  (The host
    name is no guide: on cloud, container and Kubernetes nodes it often
    resolves to 127.0.0.1.)
    """
    try:
        with open("/proc/net/route") as f:  # Linux: is there a default route at all?
            if not any(line.split()[1:2] == ["00000000"] for line in f.readlines()[1:]):
                return None
    except OSError:
        pass  # not Linux: let the kernel decide below
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1 (RFC 5737): routed by default, never used
            addr = str(s.getsockname()[0])
    except OSError:  # no route
        return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def _host_for_magnet(listen_host: str) -> str:
    """The address to advertise: the --listen host, else the default route's interface,
    else this host name's first non-loopback IPv4 (else loopback: see ``seed``'s warning).
    """
    if listen_host not in ("", "0.0.0.0", "::"):
        return listen_host
    routed = default_route_address()
    if routed is not None:
        return routed
    addrs: list[str] = []
    with contextlib.suppress(OSError):
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        addrs = [str(i[4][0]) for i in infos]
    outside = [a for a in addrs if not a.startswith("127.")]
    return (outside or addrs or ["127.0.0.1"])[0]


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


def advertised_peer(listen_host: str, port: int, advertise: tuple[str, int] | None = None
                    ) -> tuple[str, int, str | None]:
    """The HOST, PORT a seeder's magnet names, and a warning when other machines could
    not reach it (a wildcard --listen that found only loopback)."""
    if advertise is not None:
        return advertise[0], advertise[1], None
    host = _host_for_magnet(listen_host)
    warning = None
    if is_loopback(host) and not is_loopback(listen_host):
        warning = (f"warning: the magnet names {host}:{port} (no default route, and this "
                   "host's name resolves to loopback): other machines cannot reach it; pass "
                   "--advertise HOST:PORT with an address they can")
    return host, port, warning


def magnet_with_peer(ti: Any, host: str, port: int) -> str:
    """The magnet link of ``ti`` with an ``x.pe`` peer hint (BEP 9), so `get` needs no --peer."""
    uri = lt.make_magnet_uri(ti)
    h = f"[{host}]" if ":" in host else host
    return f"{uri}&x.pe={h}:{port}"


# --------------------------------------------------------------------------- download


@dataclass
class _Run:
    """Mutable state of one download() call (the loop's bookkeeping)."""

    dest: Path
    state_dir: Path
    info_hash: str
    manifest: Any
    include: tuple[str, ...]
    layers: str | None
    space_check: bool
    on_message: Callable[[str], None]
    meta: TorrentMeta | None = None
    filemap: metainfo.FileMap | None = None
    chosen: list[metainfo.TorrentFile] = field(default_factory=list)
    checked: bool = False  # a torrent_checked_alert since the last (re)check
    torrent_path: Path | None = None
    file_error: str | None = None
    resume_saved_done: int = -1
    pending_saves: int = 0
    last_save_ok: bool = False
    prio_pending: bool = False  # prioritize_files() not yet applied by the disk thread
    prio_since: float = 0.0
    back: Any = None  # a backsource.BackSource: torrent URL, mirror pieces, status
    status: str = ""
    pin_progress: ProgressFactory | None = None  # the bar of the BLAKE3 pin pass
    last_gain: float = 0.0  # when verified data last grew (the stall clock)
    last_done: int = -1
    last_notice: float = 0.0
    warned_peers: set[tuple[str, int]] = field(default_factory=set)
    watch_dirs: list[str] = field(default_factory=list)  # must never become links out
    files_checked: float = 0.0
    read_pieces: Callable[[list[int]], dict[int, bytes]] | None = None  # from libtorrent's store


def _resume_path(state_dir: Path, ih: str) -> Path:
    return state_dir / f"{ih}.resume"


def _marker_path(state_dir: Path, ih: str) -> Path:
    return state_dir / f"{ih}.running"


DONE_NAME = "done.json"


def done_marker(dest: str | os.PathLike[str]) -> Path:
    """DEST/.grokfetch/done.json: written when a get into DEST has every selected byte.

    An init container or readiness probe waits for it (``test -f``); a new get
    into DEST removes it first, so it never stands beside files being changed.
    """
    return Path(dest) / STATE_DIR / DONE_NAME


def _write_done_marker(run: _Run, root: Path, manifest_path: Path | None, info_hash: str,
                       complete: bool) -> None:
    import datetime
    import hashlib

    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest() if manifest_path else None
    roots = load_manifest(manifest_path).pinned_by if manifest_path else ()
    atomic_write_json(done_marker(run.dest), {
        "complete": complete,  # every file, not a --layers/--include selection
        "layers": run.layers,
        "include": list(run.include),
        "root": str(root),
        "root_of_trust": "; ".join(r.words() for r in roots)
        or f"torrent {info_hash} (every piece's SHA-1 checked)",
        "pinned_by": [r.to_dict() for r in roots],
        "info_hash": info_hash,
        "manifest": str(manifest_path) if manifest_path else None,
        "manifest_sha256": digest,
        "files": len(run.chosen),
        "bytes": sum(f.size for f in run.chosen),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })


def _have_bytes(params: Any, meta: TorrentMeta | None) -> int:
    """Bytes in the pieces a resume-data snapshot has (comparable to Progress.wanted_done)."""
    if meta is None:
        return 0
    have = list(params.have_pieces)
    total = sum(meta.piece_length for b in have if b)
    last = meta.num_pieces - 1
    if len(have) > last >= 0 and have[last]:  # the last piece is usually short
        total -= meta.piece_length * meta.num_pieces - meta.total_size
    return total


def _lock_dest(state_dir: Path) -> int:
    """An exclusive lock on DEST's state folder (an fd to close), or UsageError if held."""
    return lock_dest(state_dir.parent, "get", "is downloading into", lock_file=state_dir / "lock")


@dataclass(frozen=True)
class DownloadOptions:
    """Everything ``download`` takes besides what and where (its keyword arguments)."""

    manifest: Any = None  # a Manifest, a path to one, or a packaged model's name
    peers: Sequence[str | tuple[str, int]] = ()
    include: Sequence[str] = ()
    layers: str | None = None
    net: NetOptions | None = None
    web_seeds: Sequence[str] = ()
    trackers: Sequence[str] = ()
    repair: bool = False
    space_check: bool = True
    pin: bool = True
    seed: bool = False
    seed_ratio: float | None = None
    seed_while_needed: float | None = None
    resume_interval: float = 30.0
    progress_interval: float = 1.0
    timeout: float | None = None
    stall_timeout: float | None = None
    on_progress: Callable[[Progress], None] | None = None
    on_message: Callable[[str], None] | None = None
    sources: str | None = "auto"
    mirror: Any = None
    metadata_timeout: float = 60.0
    pin_progress: ProgressFactory | None = None


@dataclass
class _Added:
    """What the session is given: libtorrent's add_torrent_params and how they came about."""

    atp: Any
    resume_file: Path
    marker: Path  # the crash marker: present while a session runs
    recheck: bool  # resume data dropped: libtorrent hashes what is on disk
    reprioritize: list[int] | None  # a changed selection, applied once the torrent is added


@os_errors_as_disk_errors("dest")
def download(
    source: str | os.PathLike[str] | None,
    dest: str | os.PathLike[str],
    options: DownloadOptions | None = None,
    **changes: Any,
) -> Any:
    """Download ``source`` (model name, magnet or .torrent) into ``dest``.

    ``options`` (a DownloadOptions), or its fields as keyword arguments:

    ``sources``: "swarm" (BitTorrent only), "mirror" (whole files from the
    manifest's Hugging Face mirror, each proven by its published SHA-256;
    returns a mirror.MirrorGetResult), or "auto": the swarm, with the
    published .torrent URL for the metadata and the mirror for pieces the
    swarm does not give (see grokfetch.fetch.backsource), and whole files from the
    mirror when no metadata arrives within ``metadata_timeout`` seconds; None: the
    CLI's default rule (``_default_sources``: swarm for a magnet naming a seeder).
    ``mirror`` is a mirror.MirrorOptions (endpoint, token, connections).

    Returns when every selected file is verified by its piece hashes (and,
    with ``seed=True``, after seeding until ``seed_ratio`` or Ctrl-C; with
    ``seed_while_needed=S``, once no connected peer has needed a piece for S
    seconds).  A complete download writes the done marker (``done_marker``).
    Raises Interrupted on KeyboardInterrupt (state saved), DiskError on a full
    disk or I/O error (state saved), TorrentError / UnsafePathError when the
    torrent is unusable.  Rerunning with the same arguments continues.
    ``stall_timeout``: give up (TorrentError, state saved) when no verified
    data arrived for that many seconds; a stall is reported through
    ``on_message`` after STALL_NOTICE seconds either way, saying what
    libtorrent knows (peers, the piece nobody has, a peer that refuses).
    ``pin_progress``: the progress factory of the BLAKE3 pin pass at the end.

    The phases: resolve the source, claim DEST, start the run's bookkeeping,
    build what the session is given, then the session (fetch, pin, seed).
    """
    o = replace(options or DownloadOptions(), **changes)
    src, man = _resolve_phase(source, o)
    if o.sources is None:
        o = replace(o, sources=_default_sources(src, o.on_message or (lambda _m: None)))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    state_dir = dest / STATE_DIR
    state_dir.mkdir(exist_ok=True)
    # One run per DEST: a second one would write into the same files (unverified
    # blocks included) and clobber the resume data; the lock dies with the process.
    lock = _lock_dest(state_dir)
    try:
        run = _start_phase(dest, state_dir, src, man, o)
        if o.sources == "mirror":
            return backsource.files_from_mirror(man, dest, state_dir, o.mirror,
                                                include=o.include, layers=o.layers,
                                                space_check=o.space_check, pin=o.pin,
                                                on_progress=o.on_progress,
                                                on_message=run.on_message, timeout=o.timeout)
        peer_addrs = [p if isinstance(p, tuple) else parse_hostport(p) for p in o.peers]
        peer_addrs = list(dict.fromkeys([*src.peers, *peer_addrs]))
        added = _add_params_phase(run, src, o, peer_addrs)
        return _session_phase(run, src, o, added, peer_addrs)
    finally:
        os.close(lock)


def _resolve_phase(source: str | os.PathLike[str] | None,
                   o: DownloadOptions) -> tuple[Source, Any]:
    """What to fetch and the manifest that describes it; a bad --layers fails here."""
    src, man = resolve_source(source, o.manifest)
    if o.layers is not None:  # a usage error must not leave DEST (and its state folder) behind
        if man is None:
            raise UsageError("--layers needs a manifest (--manifest PATH or a model name)")
        metainfo.manifest_paths_for_layers(man, o.layers)  # checks the spec
    return src, man


def _start_phase(dest: Path, state_dir: Path, src: Source, man: Any,
                 o: DownloadOptions) -> _Run:
    """DEST claimed: the last run's marker and half-written state cleared, the torrent the
    user asked for remembered, and the run's bookkeeping."""
    # This run may change the files: whoever waits on the marker must wait again.
    with contextlib.suppress(FileNotFoundError):
        done_marker(dest).unlink()
    remove_stale_temps(state_dir)  # resume data a killed or disk-full run left half-written
    # What the user asked for vouches for the .torrent this run saves (grokfetch.trust).
    trust.remember_torrent(state_dir, src.info_hash, src.what)
    return _Run(
        dest=dest,
        state_dir=state_dir,
        info_hash=src.info_hash,
        manifest=man,
        include=tuple(o.include),
        layers=o.layers,
        space_check=o.space_check,
        on_message=o.on_message or (lambda _m: None),
        pin_progress=o.pin_progress,
    )


def _add_params_phase(run: _Run, src: Source, o: DownloadOptions,
                      peer_addrs: list[tuple[str, int]]) -> _Added:
    """libtorrent's add_torrent_params: resume data or metadata, the selection and the free
    space checked before any byte, the sources, the flags."""
    say, dest, state_dir = run.on_message, run.dest, run.state_dir
    resume_file = _resume_path(state_dir, src.info_hash)
    marker = _marker_path(state_dir, src.info_hash)
    saved = _read_resume(resume_file, src.info_hash, say)
    ti = meta = None
    if src.torrent is not None:
        ti, meta = metainfo.load_torrent_bytes(src.torrent, src.what)
    elif saved is not None and saved.ti is not None:
        ti = saved.ti  # a magnet whose metadata an earlier run received
        meta = metainfo.meta_from_info(ti)

    # Resume data is trusted blindly by libtorrent.  After a crash (the marker
    # of a run that did not exit cleanly is still there) or on --repair it is
    # dropped: added without it, libtorrent hashes what is on disk and keeps
    # every good piece.
    recheck = o.repair or marker.exists()
    if saved is not None and not recheck:
        atp = saved
        say(f"resuming from {resume_file.name}")
    elif ti is not None:
        atp = lt.add_torrent_params()
        atp.ti = ti
    else:
        assert src.magnet is not None  # a Source without a torrent is a magnet
        atp = lt.parse_magnet_uri(src.magnet)
    if ti is None and (o.web_seeds or src.web_seeds) and not peer_addrs:
        say("note: a web seed cannot supply a magnet's metadata; waiting for peers "
            "(pass the .torrent instead to fetch from the web seed alone)")
    if recheck:
        why = "--repair" if o.repair else "the last run did not exit cleanly"
        say(f"rechecking the data on disk ({why})")
    if o.sources in ("auto", "swarm"):
        run.back = backsource.make(o.sources, src.info_hash, run.manifest, o.mirror,
                                   o.metadata_timeout, need_metadata=ti is None, say=say)
        if ti is None and o.space_check:
            backsource.check_space_from_manifest(dest, run.manifest, o.layers)
    if atp.ti is None and ti is not None:
        atp.ti = ti

    reprioritize = None
    if meta is not None:
        _prepare(run, ti, meta)  # paths, manifest, selection, free space: before any byte
        prios = metainfo.priorities(meta, run.chosen)
        if atp is saved and list(saved.file_priorities) not in ([], prios):
            # A changed selection on a rerun: add with the saved priorities and
            # change them afterwards, so libtorrent moves what an earlier run
            # parked in its part file into the newly wanted files (given at add
            # time, the new priorities would leave that data stranded).
            reprioritize = prios
        else:
            atp.file_priorities = prios
    atp.save_path = str(dest)
    # Pieces shared with unselected files land in libtorrent's part file; keep
    # it with our state, not among the checkpoint files where verify would
    # report it as an extra file.
    if hasattr(atp, "part_file_dir"):
        atp.part_file_dir = STATE_DIR  # relative to save_path
    flags = atp.flags
    flags &= ~lt.torrent_flags.auto_managed  # never queued or paused by the session
    flags &= ~lt.torrent_flags.paused
    flags &= ~lt.torrent_flags.upload_mode  # left by a disk-full run: space has been freed
    flags &= ~lt.torrent_flags.seed_mode
    if meta is None:
        flags |= lt.torrent_flags.default_dont_download  # nothing until the metadata is checked
    atp.flags = flags
    atp.url_seeds = list(dict.fromkeys([*atp.url_seeds, *src.web_seeds, *o.web_seeds]))
    atp.trackers = list(dict.fromkeys([*atp.trackers, *src.trackers, *o.trackers]))
    return _Added(atp, resume_file, marker, recheck, reprioritize)


def _session_phase(run: _Run, src: Source, o: DownloadOptions, added: _Added,
                   peer_addrs: list[tuple[str, int]]) -> Any:
    """The session: fetch, pin while it seeds, seed on if asked; state saved on every way
    out (Ctrl-C, a full disk, a timeout)."""
    net = o.net or NetOptions()
    say, dest, state_dir, marker = run.on_message, run.dest, run.state_dir, added.marker
    recheck = added.recheck
    # Confined to DEST: a folder inside it swapped for a symlink mid-run cannot redirect a
    # write (the checks of _check_still_inside still name the link and stop the run).
    ses = make_session(net, writes_beneath=dest)
    start = time.monotonic()
    h = None
    try:
        h = ses.add_torrent(added.atp)
        run.read_pieces = functools.partial(_read_pieces, run, ses, h)
        if added.reprioritize is not None:
            _prioritize(run, h, added.reprioritize)
        say(f"listening on {_listen_text(ses, net)}")
        for addr in peer_addrs:
            h.connect_peer(addr)
        atomic_write_bytes(marker, str(os.getpid()).encode())
        try:
            _loop(run, ses, h, src, peer_addrs, start, o.resume_interval, o.progress_interval,
                  o.timeout, o.on_progress, o.stall_timeout)
        except backsource.FallBackToFiles:
            _stop_and_save(run, ses, h, marker)
            ses.remove_torrent(h)
            h = None
            return backsource.files_from_mirror(
                run.manifest, dest, state_dir, o.mirror, include=o.include, layers=o.layers,
                space_check=o.space_check, pin=o.pin, on_progress=o.on_progress,
                on_message=say, client=run.back.client, started=start, timeout=o.timeout)
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        # Pin while the session stays up (it seeds meanwhile): a BLAKE3 pass
        # over 318 GB takes a while, and --seed should not wait for it.
        try:
            root, complete, manifest_path = _finish(run, o.pin and run.torrent_path is not None)
        except PinRefused as e:
            # Bytes on disk fail the torrent although libtorrent's resume data says
            # they were good (changed since, or a resume file that lies): recheck
            # everything, fetch what is bad, and pin again.
            say(f"the pin pass found bad data on disk: {e}; rechecking and re-fetching")
            recheck = True
            run.checked = False
            h.force_recheck()
            atomic_write_bytes(marker, str(os.getpid()).encode())
            _loop(run, ses, h, src, peer_addrs, start, o.resume_interval, o.progress_interval,
                  o.timeout, o.on_progress)
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
            root, complete, manifest_path = _finish(run, True)
        _write_done_marker(run, root, manifest_path, src.info_hash, complete)
        if o.seed or o.seed_while_needed is not None:
            _seed_on(run, ses, h, start, o.seed_ratio, o.progress_interval, o.on_progress,
                     o.seed_while_needed)
        st = h.status()
        magnet = lt.make_magnet_uri(h.torrent_file())
    except KeyboardInterrupt:
        ok = _stop_and_save(run, ses, h, marker)
        what = f"state saved in {state_dir}" if ok else "state not saved (the rerun rechecks)"
        raise Interrupted(f"interrupted; {what}: rerun the same command to continue") from None
    except GrokfetchError:  # disk full, --timeout, bad metadata: keep what we have
        _stop_and_save(run, ses, h, marker)
        raise
    finally:
        with contextlib.suppress(Exception):
            if h is not None:
                ses.remove_torrent(h)
        if run.back is not None:
            run.back.stop()
        del ses

    assert run.meta is not None and run.torrent_path is not None  # set once metadata is known
    return DownloadResult(
        dest=dest,
        root=root,
        torrent_path=run.torrent_path,
        info_hash=src.info_hash,
        name=run.meta.name,
        files=len(run.chosen),
        wanted=sum(f.size for f in run.chosen),
        downloaded=st.total_payload_download,
        uploaded=st.total_payload_upload,
        failed_bytes=st.total_failed_bytes,
        elapsed=time.monotonic() - start,
        rechecked=recheck,
        complete=complete,
        manifest_path=manifest_path,
        magnet=magnet,
        sources=run.back.sources() if run.back is not None else None,
    )


def _seeded_manifest(run: _Run) -> tuple[str, Any] | None:
    """The root folder and manifest a torrent of a seeded repack or partial folder carries
    (metainfo.SEEDED_MANIFEST), read now that its pieces passed their SHA-1; the pin pass
    checks them again and checks every hash it states against the files."""
    assert run.meta is not None
    for f in run.meta.real_files():
        top, _, rel = f.path.partition("/")
        if rel == metainfo.SEEDED_MANIFEST and f in run.chosen:
            path = run.dest / f.path
            seeded = parse_manifest_bytes(read_manifest_bytes(path), str(path))
            metainfo.match_manifest(run.meta, seeded.files, str(path))  # exit 4 if it lies
            return top, seeded
    return None


def _shared_pieces(meta: TorrentMeta, chosen: Sequence[metainfo.TorrentFile]) -> list[int]:
    """Pieces that hold bytes of a chosen file and of a real file not chosen."""
    want = {f.index for f in chosen}
    pl = meta.piece_length
    spans: dict[int, set[bool]] = {}  # piece -> whether its bytes are chosen (True) or not
    offset = 0
    for f in meta.files:
        if f.size and not f.pad:
            for p in {offset // pl, (offset + f.size - 1) // pl}:  # only the ends can be shared
                spans.setdefault(p, set()).add(f.index in want)
        offset += f.size
    return sorted(p for p, kinds in spans.items() if kinds == {True, False})


def _read_pieces(run: _Run, ses: Any, h: Any, pieces: list[int],
                 wait: float = FLUSH_WAIT) -> dict[int, bytes]:
    """Whole pieces as libtorrent's store holds them (its part file for the bytes of files
    not fetched); the caller checks their SHA-1.  A piece it cannot read is left out."""
    _flush(run, ses, h)
    for p in pieces:
        h.read_piece(p)
    got: dict[int, bytes] = {}
    deadline = time.monotonic() + wait
    left = set(pieces)
    while left and time.monotonic() < deadline:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, lt.read_piece_alert):
                left.discard(a.piece)
                if not a.error.value():
                    got[a.piece] = bytes(a.buffer)
            else:
                _handle_alert(run, a, ses)
    return got


def _selection_manifest(run: _Run) -> Any:
    """The manifest cut down to the files this partial run fetched (what its pin lists)."""
    assert run.filemap is not None
    got = {f.index for f in run.chosen}
    paths = {mp for mp, f in run.filemap.by_manifest.items() if f.index in got}
    return run.manifest.with_files([e for e in run.manifest.files if e.path in paths])


def _default_sources(src: Source, say: Callable[[str], None]) -> str:
    """``--source`` when none is given: "auto", but "swarm" for a magnet that names a
    seeder (x.pe, as ``grokfetch seed`` prints it).  The origin is fetched once: the
    node that seeds a cluster may go to the mirror, the nodes it feeds never do, so a
    hundred of them cannot stampede the Hub; ``--source auto`` tells one otherwise."""
    if not src.peers:
        return "auto"
    named = ", ".join(f"{h}:{p}" for h, p in src.peers[:3])
    say(f"the magnet names a seeder ({named}): fetching from the swarm only, never from "
        "the mirror (pass --source auto to allow it)")
    return "swarm"


def _finish(run: _Run, pin: bool) -> tuple[Path, bool, Path | None]:
    """Checkpoint root, whether everything was fetched, and the pinned manifest (if pinned)."""
    assert run.meta is not None
    rel_root = run.filemap.root if run.filemap else metainfo.checkpoint_root_of(run.meta)
    base = run.manifest
    seeded = _seeded_manifest(run) if base is None else None
    if seeded is not None:
        rel_root, base = seeded
    root = run.dest / rel_root
    complete = _is_complete_selection(run)
    manifest_path = None
    if pin and complete and run.torrent_path is not None:
        manifest_path = pin_checkpoint(root, base, run.torrent_path, run.pin_progress)
        if manifest_path is not None:
            run.on_message(f"pinned manifest: {manifest_path}")
    elif pin:
        if run.filemap is not None and run.torrent_path is not None:
            # A partial pin: the files selected, each proven against the torrent in the pin
            # pass, so this folder can be seeded on (``seed`` serves exactly what a pin
            # lists).  A piece the selection shares with a file not fetched is checked
            # whole: that file's bytes of it come from libtorrent's part file.
            selection = _selection_manifest(run)
            shared = _shared_pieces(run.meta, run.chosen)
            known = run.read_pieces(shared) if run.read_pieces is not None and shared else {}
            manifest_path = pin_checkpoint(root, selection, run.torrent_path, run.pin_progress,
                                           known)
            run.on_message(f"partial download (--layers/--include): pinned the "
                           f"{len(selection.files)} files selected: {manifest_path}")
        else:
            run.on_message("partial download (--layers/--include): the manifest is not pinned")
        if run.manifest is not None and getattr(run.manifest, "config", None) is not None:
            # inspect, smoke and repack find the model here (inferring it from a partial
            # folder would describe another model).  Tagged with this user's key so they
            # can tell it from one copied along with the files; it records no root of
            # trust (no pinned_by), so it vouches for no byte.
            path = run.state_dir / SELECTION_MANIFEST
            save_pin(run.manifest, path)
            run.on_message(f"model config for later commands: {path}")
    return root, complete, manifest_path


def _seed_on(
    run: _Run,
    ses: Any,
    h: Any,
    start: float,
    seed_ratio: float | None,
    progress_interval: float,
    on_progress: Callable[[Progress], None] | None,
    while_needed: float | None = None,
) -> None:
    """Keep seeding after the download: until ``seed_ratio``, Ctrl-C (a normal end here),
    or - with ``while_needed`` (seconds) - until no connected peer has lacked a piece for
    that long (a cluster node that leaves once the fleet no longer needs it)."""
    if while_needed is not None:
        until = f"no peer has needed a piece for {while_needed:g} s"
    elif seed_ratio is not None:
        until = f"upload ratio {seed_ratio:g}"
    else:
        until = "Ctrl-C"
    run.on_message(f"seeding until {until}")
    fleet = Fleet()
    last_needed = time.monotonic()
    try:
        while True:
            ses.wait_for_alert(int(progress_interval * 1000))
            for a in ses.pop_alerts():
                _handle_alert(run, a, ses)
            st = h.status()
            view = fleet.observe(fleet_of(h))
            if on_progress is not None:
                on_progress(replace(_progress(st, time.monotonic() - start, run, True),
                                    fleet=view))
            if seed_ratio is not None and st.total_payload_upload >= seed_ratio * max(
                1, st.total_wanted
            ):
                return
            if while_needed is not None:
                if view.needing:
                    last_needed = time.monotonic()
                elif time.monotonic() - last_needed >= while_needed:
                    return
    except KeyboardInterrupt:
        return


def _read_resume(path: Path, info_hash: str, say: Callable[[str], None]) -> Any:
    """add_torrent_params from our resume file, or None (missing, unreadable, other torrent)."""
    if not path.exists():
        return None
    try:
        atp = lt.read_resume_data(path.read_bytes())
    except Exception:
        say(f"ignoring unreadable resume data {path}")
        return None
    return atp if str(atp.info_hashes.v1) == info_hash else None


def _stop_and_save(run: _Run, ses: Any, h: Any, marker: Path) -> bool:
    """Pause and write resume data (Ctrl-C, SIGTERM, disk full); True when saved.

    Only a save that made it to disk marks the exit clean: otherwise the
    crash marker stays and the rerun rechecks instead of trusting older data.
    """
    if h is None:
        return True
    h.pause()
    if not _save_resume(run, ses, h, flush=True):
        return False
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    return True


def _is_complete_selection(run: _Run) -> bool:
    if run.meta is None:
        return False
    if run.filemap is not None:
        listed = set(run.filemap.by_manifest.values())
        return sum(1 for f in run.chosen if f in listed) == len(listed)
    return len(run.chosen) == len(run.meta.real_files())


def _prepare(run: _Run, ti: Any, meta: TorrentMeta) -> None:
    """Metadata is known: check it, save the .torrent, choose files, check space."""
    run.meta = meta
    tokenizer: list[metainfo.TorrentFile] = []  # extras fetched with the checkpoint
    if run.manifest is not None:
        run.filemap = metainfo.match_manifest(meta, run.manifest.files, meta.name)
        whole = not run.include and run.layers is None
        # The whole checkpoint is pinned, and the pin pass checks every piece from disk:
        # an extra file that shares a piece with it is needed to check that piece.
        sharers = {f.index for f in meta.piece_sharers(list(run.filemap.by_manifest.values()))}
        for f in run.filemap.extra:
            if f.path.rsplit("/", 1)[-1] == TOKENIZER and whole:
                tokenizer.append(f)  # what an inference stack needs beside the weights
                run.on_message(f"not in the manifest, fetched too: {f.path}")
            elif f.index in sharers and whole:
                tokenizer.append(f)
                run.on_message(f"not in the manifest, fetched too: {f.path} (it shares a "
                               "torrent piece with the checkpoint, which the pin checks whole)")
            else:
                run.on_message(f"not in the manifest, skipped: {f.path}")
    elif run.layers is not None:
        raise UsageError("--layers needs a manifest (--manifest PATH or a model name)")
    # Every file must land inside DEST (the raw paths were checked already;
    # this also refuses symlinks planted in DEST).
    for f in meta.real_files():
        inside(run.dest, f.path, "torrent file path")
    layer_paths = (
        metainfo.manifest_paths_for_layers(run.manifest, run.layers)
        if run.layers is not None
        else None
    )
    run.chosen = metainfo.select_files(meta, run.filemap, run.include, layer_paths) + tokenizer
    wanted = sum(f.size for f in run.chosen)
    if run.torrent_path is None:
        run.torrent_path = run.dest / _torrent_file_name(meta)
        atomic_write_bytes(run.torrent_path, metainfo.torrent_file_bytes(ti))
    need = space_needed(run.dest, run.chosen)
    run.on_message(
        f"{meta.name}: {len(run.chosen)} of {len(meta.real_files())} files, "
        f"{format_bytes(wanted)} of {format_bytes(meta.total_size)} selected, "
        f"up to {format_bytes(need)} still to download"
    )
    if run.space_check:
        check_space(run.dest, run.chosen)


def _save_resume(run: _Run, ses: Any, h: Any, flush: bool = False, wait: float = SAVE_WAIT) -> bool:
    """Ask for resume data and write it when it arrives (waits at most ``wait`` seconds).

    True when it was written; False when it did not arrive in time or could
    not be written.
    """
    flags = lt.save_resume_flags_t.save_info_dict
    if flush:
        flags |= lt.save_resume_flags_t.flush_disk_cache
    h.save_resume_data(flags)
    run.pending_saves += 1
    run.last_save_ok = False
    deadline = time.monotonic() + wait
    while run.pending_saves > 0 and time.monotonic() < deadline:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            _handle_alert(run, a, ses)
    return run.pending_saves == 0 and run.last_save_ok


def _prioritize(run: _Run, h: Any, prios: list[int]) -> None:
    """Set file priorities; completion waits for libtorrent's file_prio_alert."""
    run.prio_pending = True
    run.prio_since = time.monotonic()
    h.prioritize_files(prios)


def _flush(run: _Run, ses: Any, h: Any, wait: float = FLUSH_WAIT) -> None:
    """Wait until every verified block is written to its file.

    A piece passes its hash check from libtorrent's store buffer, before the
    disk thread has written it: "complete" does not yet mean "on disk", and
    pinning (which reads the files) must not start before this returns.
    """
    h.flush_cache()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, lt.cache_flushed_alert):
                return
            _handle_alert(run, a, ses)
    raise DiskError(f"{run.dest}: data not written to disk after {wait:.0f} s")


def _write_resume(run: _Run, a: Any) -> None:
    data = lt.write_resume_data_buf(a.params)
    path = _resume_path(run.state_dir, run.info_hash)
    try:
        atomic_write_bytes(path, bytes(data))
    except OSError as e:
        # Typically the disk that just filled up.  The crash marker stays, so
        # the rerun rechecks the data instead of trusting older resume data.
        run.on_message(f"could not save resume data {path}: {e.strerror}")
        return
    run.last_save_ok = True
    run.resume_saved_done = _have_bytes(a.params, run.meta)


def _handle_alert(run: _Run, a: Any, ses: Any) -> None:
    if run.back is not None and run.back.on_alert(a):
        return  # tracker replies and errors: summarised in the status line
    if isinstance(a, lt.save_resume_data_alert):
        _write_resume(run, a)
        run.pending_saves = max(0, run.pending_saves - 1)
    elif isinstance(a, lt.save_resume_data_failed_alert):
        run.pending_saves = max(0, run.pending_saves - 1)
    elif isinstance(a, lt.torrent_checked_alert):
        run.checked = True
    elif isinstance(a, lt.file_prio_alert):
        run.prio_pending = False
    elif isinstance(a, lt.file_error_alert):
        code = a.error.value() if hasattr(a.error, "value") else 0
        what = "disk full" if code == errno.ENOSPC else a.error.message()
        run.file_error = f"{a.filename()}: {what} (errno {code}); fix it and rerun to continue"
    elif isinstance(a, lt.metadata_failed_alert):
        run.file_error = None
        raise TorrentError(f"{run.info_hash}: peers sent invalid metadata ({a.message()})")
    elif isinstance(a, lt.listen_failed_alert):
        raise TorrentError(f"cannot listen: {a.message()} (choose another --listen HOST:PORT)")
    elif isinstance(a, (lt.tracker_error_alert, lt.url_seed_alert)):
        run.on_message(a.message())


def _loop(
    run: _Run,
    ses: Any,
    h: Any,
    src: Source,
    peers: Sequence[tuple[str, int]],
    start: float,
    resume_interval: float,
    progress_interval: float,
    timeout: float | None,
    on_progress: Callable[[Progress], None] | None,
    stall_timeout: float | None = None,
) -> None:
    """Run until every selected piece is verified; raise on errors, timeout or Ctrl-C."""
    last_progress = 0.0
    last_save = time.monotonic()
    last_dial = time.monotonic()
    ti_known = run.meta is not None
    run.last_gain = run.last_notice = time.monotonic()
    notice_every = STALL_NOTICE if stall_timeout is None else min(STALL_NOTICE, stall_timeout / 2)
    while True:
        ses.wait_for_alert(200 if run.back is None else run.back.wait_ms())
        for a in ses.pop_alerts():
            _handle_alert(run, a, ses)
        _check_still_inside(run, h)
        now = time.monotonic()
        st = h.status()
        if not ti_known and not st.has_metadata and run.back is not None:
            run.status = run.back.before_metadata(ses, h, st, now)
        if not ti_known and st.has_metadata:
            ti = h.torrent_file()
            meta = metainfo.meta_from_info(ti)
            _prepare(run, ti, meta)
            _prioritize(run, h, metainfo.priorities(meta, run.chosen))
            ti_known = True
            origin = (run.back.metadata_from if run.back is not None else None) or "peers"
            run.status = ""
            run.on_message(f"metadata received from {origin}: {meta.num_pieces} pieces")
            st = h.status()
        if run.back is not None and ti_known and run.checked and not run.prio_pending:
            assert run.meta is not None
            root = run.filemap.root if run.filemap else metainfo.checkpoint_root_of(run.meta)
            run.back.start_pieces(h, h.torrent_file(), run.chosen, root)
            run.back.tick(st, now)
        if run.file_error or st.upload_mode:
            msg = run.file_error or f"{run.dest}: writing failed (disk full?); rerun to continue"
            raise DiskError(msg)
        if st.errc.value():  # libtorrent stopped the torrent
            raise _stopped_error(run, ses, h, st)
        if st.num_peers == 0 and now - last_dial >= REDIAL_EVERY:
            if st.list_peers and not st.connect_candidates and not st.is_finished:
                recount_connect_candidates(ses)
            for addr in peers:
                h.connect_peer(addr)
                if addr not in run.warned_peers:  # say once why a named peer is not there
                    run.warned_peers.add(addr)
                    why = probe_peer(addr)
                    if why is not None:
                        run.on_message(f"cannot connect to {addr[0]}:{addr[1]}: {why} "
                                       f"(retrying every {REDIAL_EVERY:.0f} s)")
            last_dial = now
        done = (
            ti_known
            and run.checked
            # (should the alert never come, do not wait for it forever)
            and not (run.prio_pending and now - run.prio_since < PRIO_WAIT)
            and st.state not in (_S.checking_files, _S.checking_resume_data)
            and st.total_wanted > 0
            and st.total_wanted_done == st.total_wanted
            and (run.back is None or run.back.idle())  # no piece parked at priority 0
        )
        if on_progress is not None and (now - last_progress >= progress_interval or done):
            on_progress(_progress(st, now - start, run, done))
            last_progress = now
        if now - last_save >= resume_interval and st.need_save_resume:
            flags = lt.save_resume_flags_t.save_info_dict
            h.save_resume_data(flags)
            run.pending_saves += 1
            last_save = now
        if done:
            _flush(run, ses, h)
            _save_resume(run, ses, h, flush=True)
            run.on_message(f"complete: {len(run.chosen)} files verified by their piece hashes")
            return
        if st.total_wanted_done > run.last_done or st.state in (
            _S.checking_files, _S.checking_resume_data
        ):
            run.last_done = st.total_wanted_done
            run.last_gain = run.last_notice = now
        stalled = now - run.last_gain
        if stall_timeout is not None and stalled >= stall_timeout:
            raise TorrentError(f"{src.what}: no progress for {stall_timeout:.0f} s: "
                               f"{stall_text(run, h, st, peers, stalled)}; state saved, rerun")
        if now - run.last_notice >= notice_every:
            run.last_notice = now
            run.on_message(f"no data for {stalled:.0f} s: {stall_text(run, h, st, peers, stalled)}")
        if timeout is not None and now - start > timeout and not done:
            total = st.total_wanted if ti_known else getattr(run.manifest, "total_size", 0)
            why = "" if run.back is None else "; " + run.back.why_stopped(ses, st, now, ti_known)
            raise TorrentError(
                f"{src.what}: not complete after {timeout:.0f} s "
                f"({st.total_wanted_done if ti_known else 0:,} of {total:,} bytes{why}; "
                f"{stall_text(run, h, st, peers, stalled)}); state saved, rerun"
            )


def _check_still_inside(run: _Run, h: Any) -> None:
    """Stop before libtorrent writes through a symlink swapped into DEST mid-run.

    libtorrent opens files by path, so ``DEST/ckpt-0`` replaced by a link to
    elsewhere would redirect every file it opens from then on.  Where Linux has
    Landlock the kernel refuses those writes (``make_session(writes_beneath=)``)
    and this check names the link; elsewhere it is the only guard, with a window
    of one tick.  Checked at each tick of the loop (a few lstat calls: only a
    link found on the way is resolved), every file too when a write has just
    failed; on an escape the torrent is paused at once.
    """
    if not run.chosen:
        return
    if not run.watch_dirs:
        run.watch_dirs = sorted({str(Path(f.path).parent) for f in run.chosen} - {"."}, key=len)
    # the folders at every tick (a handful); the files, a few hundred, twice a second
    now = time.monotonic()
    watch = run.watch_dirs
    if now - run.files_checked >= 0.5 or run.file_error:
        run.files_checked = now
        watch = watch + [f.path for f in run.chosen]
    for rel in watch:
        try:
            is_link = stat.S_ISLNK(os.lstat(run.dest / rel).st_mode)
        except OSError:  # not created yet
            continue
        if is_link:
            try:
                inside(run.dest, rel, "path")
            except UnsafePathError:
                h.pause()
                raise UnsafePathError(
                    f"{run.dest / rel}: became a symlink leading outside {run.dest} during "
                    "the download; stopped before writing through it (remove the link and "
                    "rerun)") from None


def probe_peer(addr: tuple[str, int], timeout: float = 1.0) -> str | None:
    """Why a TCP connection to ``addr`` fails ('connection refused'), or None if it opens.

    libtorrent drops a failed dial without an alert; a user who named a peer
    must be told it is not there.
    """
    try:
        with socket.create_connection(addr, timeout=timeout):
            return None
    except TimeoutError:
        return "no answer (timed out)"
    except OSError as e:
        return (e.strerror or str(e)).lower()


def stall_text(run: _Run, h: Any, st: Any, peers: Sequence[tuple[str, int]],
               stalled: float) -> str:
    """What libtorrent can tell about a run that gets no data: peers, and what they lack."""
    n = st.num_peers
    seeds = st.num_seeds
    text = f"{n} peer{'' if n == 1 else 's'} ({seeds} seed{'' if seeds == 1 else 's'})"
    if n == 0:
        failing = [(a, why) for a in list(peers)[:4] if (why := probe_peer(a)) is not None]
        if failing:
            text += "; " + "; ".join(f"{a[0]}:{a[1]}: {why}" for a, why in failing)
        elif not peers:
            text += "; no peer found yet (name one with --peer HOST:PORT, or check the network)"
        return text
    if run.meta is None:
        return text + ", waiting for them to send the metadata"
    with contextlib.suppress(Exception):  # a status query must never end the run
        prios = h.get_piece_priorities()
        avail = h.piece_availability()
        have = st.pieces
        missing = [i for i, p in enumerate(prios) if p and i < len(have) and not have[i]]
        lacking = [i for i in missing if i < len(avail) and avail[i] == 0]
        if lacking:
            i = lacking[0]
            more = f" (and {len(lacking) - 1} more pieces)" if len(lacking) > 1 else ""
            text += (f"; none of them has piece {i}{more}: "
                     f"{piece_files(h.torrent_file(), i)}")
        elif missing:
            text += (f"; they have the {len(missing)} missing piece(s) but send nothing "
                     "(choked, or the data fails its hash check on their side)")
    return text


def _stopped_error(run: _Run, ses: Any, h: Any, st: Any) -> GrokfetchError:
    """Why libtorrent stopped the torrent, as the error to raise.

    A file it could not open or write (a path on disk that is a file where a
    folder must be, a folder where a file must be, no permission) is a disk
    problem naming that file.  Its ``file_error_alert`` can trail the status
    that shows the error, so the alerts are drained once more before deciding.
    """
    deadline = time.monotonic() + ALERT_GRACE
    while run.file_error is None and time.monotonic() < deadline:
        ses.wait_for_alert(50)
        for a in ses.pop_alerts():
            _handle_alert(run, a, ses)
    if run.file_error:
        return DiskError(run.file_error)
    if st.error_file >= 0:  # negative values: the torrent itself (metadata, URL, part file)
        where: object = st.error_file
        with contextlib.suppress(Exception):
            where = run.dest / metainfo.file_layout(h.torrent_file()).file_path(st.error_file)
        return DiskError(f"{where}: {st.errc.message()}; fix it and rerun to continue")
    return TorrentError(f"{run.info_hash}: {st.errc.message()}")


def piece_files(ti: Any, piece: int) -> str:
    """Which files, and which bytes of each, a piece covers: 'ckpt-0/tensor00003_000
    bytes 0-12432' (what a message about a bad piece must name)."""
    fs = metainfo.file_layout(ti)
    parts = []
    for s in ti.map_block(piece, 0, ti.piece_size(piece)):
        if fs.file_flags(s.file_index) & lt.file_storage.flag_pad_file:
            continue
        parts.append(f"{fs.file_path(s.file_index)} bytes {s.offset}-{s.offset + s.size - 1}")
    return ", ".join(parts)


def _state_name(st: Any, done: bool) -> str:
    if st.paused:
        return "paused"
    if done:
        return "seeding"
    return _STATE_NAMES.get(st.state, str(st.state))


def _status_progress(st: Any, *, done: bool, elapsed: float, has_meta: bool = True,
                     resume_saved_done: int = -1, fleet: FleetStatus | None = None) -> Progress:
    """A Progress snapshot from a libtorrent torrent_status (downloads and seeds alike)."""
    return Progress(
        state=_state_name(st, done),
        wanted=st.total_wanted if has_meta else 0,
        wanted_done=st.total_wanted_done if has_meta else 0,
        downloaded=st.total_payload_download,
        uploaded=st.total_payload_upload,
        download_rate=st.download_payload_rate,
        upload_rate=st.upload_payload_rate,
        peers=st.num_peers,
        seeds=st.num_seeds,
        elapsed=round(elapsed, 3),
        resume_saved_done=resume_saved_done,
        fleet=fleet,
    )


def _progress(st: Any, elapsed: float, run: _Run, done: bool) -> Progress:
    p = _status_progress(st, done=done, elapsed=elapsed, has_meta=run.meta is not None,
                         resume_saved_done=run.resume_saved_done)
    if run.back is None:
        return p
    return replace(p, expected=run.back.expected_total, status=run.status,
                   sources=run.back.sources())


# --------------------------------------------------------------------------- seed


@dataclass(frozen=True)
class SeedInfo:
    folder: Path  # libtorrent save path (the folder holding the torrent's root folder)
    torrent_path: Path
    info_hash: str
    name: str
    port: int
    magnet: str  # with an x.pe peer hint pointing at this seeder
    verified: str  # "lazy" (pinned: each piece checked when first sent) or "full"
    total: int
    have: int  # bytes verified on disk (== total for a complete checkpoint)


def _find_torrent_for(folder: Path) -> tuple[Path | None, Path]:
    """A .torrent saved by `get` (or made earlier) for ``folder``, and the save path it implies."""
    cands = sorted(folder.glob("*.torrent")) + sorted(folder.parent.glob("*.torrent"))
    for t in cands:
        with contextlib.suppress(Exception):
            _, meta = metainfo.load_torrent(t)
            first = meta.real_files()[0]
            for base in (folder, folder.parent, t.parent):
                if (base / first.path).is_file():
                    return t, base
    return None, folder


def _refuse_odd_files(folder: Path) -> None:
    """No pin to compare with: still never make a torrent of a FIFO, a device or a socket
    (reading one would hang or never end)."""
    import stat as stat_mod

    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        for name in filenames:
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                mode = os.stat(p).st_mode
                if not stat_mod.S_ISREG(mode) and not stat_mod.S_ISDIR(mode):
                    raise UsageError(f"{p}: not a regular file; not seeding")


def _check_torrent_is_pin(tpath: Path, meta: TorrentMeta, pin: Any) -> None:
    """The torrent serves exactly the pinned files: none missing, none the pin never saw.

    Files beside the checkpoint that the published torrent also carries (a
    tokenizer, a README) are no checkpoint files: the pin need not list them;
    they must be on disk (checked with the rest), and like every piece theirs
    are hashed before they are first sent.
    """
    from grokfetch.format.layout import is_tensor_path

    pinned = {e.path: e.size for e in pin.files}
    served = {}
    for f in meta.real_files():
        rel = next((p for p in pinned if f.path == p or f.path.endswith("/" + p)), None)
        if rel is None and not is_tensor_path(f.path):
            continue
        if rel is None:
            raise UsageError(f"{tpath}: serves {f.path}, which the pinned manifest does not "
                             "list; not seeding")
        served[rel] = f.size
    missing = sorted(set(pinned) - set(served))
    if missing:
        raise UsageError(f"{tpath}: lacks {len(missing)} pinned file(s) (first: {missing[0]}); "
                         "not seeding a part of the checkpoint")
    wrong = [rel for rel, size in served.items() if pinned[rel] != size]
    if wrong:
        raise UsageError(f"{tpath}: {wrong[0]} is {served[wrong[0]]} bytes in the torrent, "
                         f"{pinned[wrong[0]]} in the pin; not seeding")


def seeds_its_own_list(pin: Any) -> bool:
    """A pin of a repack, or of only some of a checkpoint's files (``get``/``repack
    --layers``): what is seeded is exactly its file list, under a torrent made of them."""
    if getattr(pin, "repack", None) is not None:
        return True
    if getattr(pin, "config", None) is None:
        return False
    from grokfetch.format.layout import param_list

    listed = {e.path for e in pin.files}
    return any(p.file not in listed for p in param_list(pin.config))


def _safe_name(name: str | None) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name or "").strip("._")


def _serving_problem(meta: TorrentMeta, pin: Any) -> str | None:
    """Why a listed torrent does not serve exactly the files ``pin`` lists, or None.  The
    pin it carries (metainfo.SEEDED_MANIFEST) and the packaged tokenizer the pin names
    travel beside the listed files and are not counted."""
    served = {f.path.split("/", 1)[-1]: f.size for f in meta.real_files()}  # below its root
    served.pop(metainfo.SEEDED_MANIFEST, None)
    pinned = {e.path: e.size for e in pin.files}
    tok = getattr(pin, "tokenizer", None)
    if tok is not None and tok.path not in pinned and served.get(tok.path) == tok.size:
        served.pop(tok.path)
    if served == pinned:
        return None
    extra = sorted(set(served) - set(pinned))
    if extra:
        return f"serves {extra[0]}, which the pinned manifest does not list"
    missing = sorted(set(pinned) - set(served))
    if missing:
        return f"lacks {len(missing)} pinned file(s) (first: {missing[0]})"
    wrong = next(rel for rel in served if served[rel] != pinned[rel])
    return f"{wrong} is {served[wrong]} bytes in the torrent, {pinned[wrong]} in the pin"


def _check_serves_exactly(tpath: Path, meta: TorrentMeta, pin: Any) -> None:
    """A repack or partial folder serves the files its pin lists and nothing else."""
    problem = _serving_problem(meta, pin)
    if problem is not None:
        raise UsageError(f"{tpath}: {problem}; not seeding")


class Seeder:
    """Seed a checkpoint folder from one libtorrent session.

    ``start()`` checks the data (lazily when a pinned manifest vouches for it,
    by hashing every piece otherwise) and returns a SeedInfo with the magnet;
    ``status()`` gives a Progress; ``stop()`` closes the session.  Use it as a
    context manager, or ``run()`` to block until Ctrl-C.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        torrent: str | os.PathLike[str] | None = None,
        net: NetOptions | None = None,
        web_seeds: Sequence[str] = (),
        full_check: bool = False,
        on_message: Callable[[str], None] | None = None,
        advertise: str | None = None,
        super_seed: bool = False,
    ) -> None:
        self.folder = Path(folder)
        # BEP 16 with every peer unchoked: each piece leaves this node about once and the
        # nodes trade the rest (a cluster fan-out; README "Cluster fan-out" has the figures)
        self.super_seed = super_seed
        # HOST:PORT put into the magnet's x.pe hint instead of the one guessed
        self.advertise = parse_hostport(advertise, "--advertise") if advertise else None
        self.torrent = Path(torrent) if torrent is not None else None
        self.net = net or NetOptions()
        self.web_seeds = tuple(web_seeds)
        self.full_check = full_check
        self.say = on_message or (lambda _m: None)
        self.ses: Any = None
        self.h: Any = None
        self.info: SeedInfo | None = None
        self.fleet = Fleet()
        self._t0 = time.monotonic()

    def start(self, check_timeout: float | None = None) -> SeedInfo:
        if not self.folder.is_dir():
            raise UsageError(f"{self.folder}: not a folder")
        # The file set is checked before anything is served or a torrent is made of it:
        # a pinned folder with a file gone (or replaced by a FIFO) is never a smaller torrent.
        pin = self._pin(self.folder)
        if pin is not None:
            self._check_file_set(self.folder, pin)
        else:
            _refuse_odd_files(self.folder)
        own_list = pin is not None and seeds_its_own_list(pin)
        renamed: dict[int, str] = {}
        if self.torrent is not None:
            tpath = self.torrent
            _, meta = metainfo.load_torrent(tpath)
            first = meta.real_files()[0]
            save = next(
                (b for b in (self.folder, self.folder.parent) if (b / first.path).is_file()),
                self.folder,
            )
        elif own_list:
            tpath, save, renamed = self._listed_torrent(pin)
        else:
            found, save = _find_torrent_for(self.folder)
            if found is None:
                self.say(f"making a torrent of {self.folder}")
                found = make_torrent(self.folder, web_seeds=self.web_seeds)
                _, save = _find_torrent_for(self.folder)
            tpath = found
        ti, meta = metainfo.load_torrent(tpath)
        if own_list:
            _check_serves_exactly(tpath, meta, pin)
        disk = {f.index: Path(renamed.get(f.index) or save / f.path) for f in meta.real_files()}
        sizes_ok = all(
            disk[f.index].is_file() and disk[f.index].stat().st_size == f.size
            for f in meta.real_files()
        )
        if not sizes_ok:
            raise UsageError(
                f"{save}: files missing or of the wrong size for {tpath.name}; "
                f"finish them with `grokfetch get {tpath} --dest {save}`"
            )
        if pin is not None and not own_list:
            _check_torrent_is_pin(tpath, meta, pin)
        lazy = pin is not None and not self.full_check
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = str(save)
        if renamed:
            atp.renamed_files = renamed  # the torrent's names -> where the files are here
        flags = atp.flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        if lazy:
            # The pinned manifest vouches for the files: libtorrent checks each
            # piece against its hash the first time it sends it.
            flags |= lt.torrent_flags.seed_mode
        if self.super_seed:
            # Set before any peer connects: a peer that was told "I have every piece" keeps
            # asking for pieces a super-seeder no longer serves it (it stalls until it
            # reconnects), so super-seeding is never switched on mid-run.
            flags |= lt.torrent_flags.super_seeding
        atp.flags = flags
        if self.web_seeds:
            atp.url_seeds = list(self.web_seeds)
        self.ses = make_session(self.net)
        if self.super_seed:
            # A super-seeder offers each peer one piece at a time; with only the 8
            # default unchoke slots the other peers would wait (measured: 0.91 of the cap
            # with 8 slots, 0.96 with every peer unchoked, 16 nodes).
            self.ses.apply_settings({"unchoke_slots_limit": -1})
        self.h = self.ses.add_torrent(atp)
        deadline = None if check_timeout is None else time.monotonic() + check_timeout
        if not lazy:
            self.say(f"checking {format_bytes(meta.total_size)} against the torrent's piece hashes")
        checked = False  # status is not to be trusted before torrent_checked_alert
        while not checked:
            for a in self.ses.pop_alerts():
                if isinstance(a, lt.listen_failed_alert):
                    raise TorrentError(f"cannot listen: {a.message()}")
                if isinstance(a, lt.torrent_checked_alert):
                    checked = True
            if checked:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TorrentError(f"{save}: checking did not finish in time")
            self.ses.wait_for_alert(100)
        st = self.h.status()
        if st.total_done < meta.total_size:
            if self.super_seed:
                self.h.unset_flags(lt.torrent_flags.super_seeding)  # BEP 16 is for a full seed
                self.say("not super-seeding: not every piece is here")
            bad = [i for i, have in enumerate(st.pieces) if not have]
            where = "; ".join(f"piece {i}: {piece_files(ti, i)}" for i in bad[:3])
            more = f"; and {len(bad) - 3} more pieces" if len(bad) > 3 else ""
            self.say(
                f"warning: only {format_bytes(st.total_done)} of {format_bytes(meta.total_size)} "
                f"verified ({where}{more}); seeding what is good (repair with "
                f"`grokfetch get {tpath} --dest {save} --repair`)"
            )
        port = self.ses.listen_port()
        host = parse_hostport(self.net.listen.split(",")[0], "--listen", allow_zero=True)[0]
        peer_host, peer_port, warning = advertised_peer(host, port, self.advertise)
        if warning:
            self.say(warning)
        self.info = SeedInfo(
            folder=save,
            torrent_path=tpath,
            info_hash=meta.info_hash,
            name=meta.name,
            port=port,
            magnet=magnet_with_peer(ti, peer_host, peer_port),
            verified="lazy" if lazy else "full",
            total=meta.total_size,
            have=st.total_done,
        )
        self._t0 = time.monotonic()
        return self.info

    def _pin(self, folder: Path) -> Any:
        """The folder's pinned manifest when this user pinned it (else None, and why)."""
        from grokfetch.format.manifest import load_manifest_file

        path = locate(folder).manifest_path  # a FIFO or folder there: refused, never opened
        if not path.is_file():
            return None
        lm = load_manifest_file(path)
        if lm.authentic:
            return lm.manifest
        self.say(f"{path}: manifest of unknown origin: not a root of trust; every piece is "
                 "checked instead")
        return None

    def _listed_torrent(self, pin: Any) -> tuple[Path, Path, dict[int, str]]:
        """The torrent of exactly the files ``pin`` lists (a repack, a partial checkpoint):
        the one `get` saved when it serves exactly them, else one made now; with the save
        path and, for a made one, where each of its files is on disk."""
        found, save = _find_torrent_for(self.folder)
        if found is not None and _serving_problem(metainfo.load_torrent(found)[1], pin) is None:
            return found, save, {}
        from grokfetch.integrity.verify import manifest_disk_paths

        name = _safe_name(pin.name) or self.folder.name
        paths = manifest_disk_paths(self.folder, pin)
        listed = [metainfo.ListedFile(e.path, paths[e.path], e.blake3, e.sha256)
                  for e in pin.files]
        tok = getattr(pin, "tokenizer", None)
        if tok is not None and tok.path not in paths and tok.sha256 \
                and (self.folder / tok.path).is_file():
            listed.append(metainfo.ListedFile(tok.path, self.folder / tok.path, tok.blake3,
                                              tok.sha256))
        # The pin, without the tag only this user's key can check, travels with the files:
        # the nodes that fetch them learn names, config and layout from it, and check it.
        seeded = self.folder / metainfo.SEEDED_MANIFEST
        seeded.parent.mkdir(exist_ok=True)
        atomic_write_json(seeded, pin.to_dict())
        listed.append(metainfo.ListedFile(metainfo.SEEDED_MANIFEST, seeded))
        listed.sort(key=lambda item: item.rel.encode())  # one order on every node
        self.say(f"making a torrent of the {len(pin.files)} files {self.folder} pinned "
                 "(each checked against the pin as it is hashed)")
        data = metainfo.build_listed_torrent(name, listed)
        tpath = self.folder / f"{name}.torrent"
        atomic_write_bytes(tpath, data)
        _, meta = metainfo.load_torrent_bytes(data, str(tpath))
        by_rel = {item.rel: item.disk for item in listed}
        renamed = {f.index: str(by_rel[f.path.split("/", 1)[1]].resolve())
                   for f in meta.real_files()}
        self.say(f"wrote {tpath} (info-hash {meta.info_hash}): give it (or the magnet) to "
                 "`grokfetch get`; it is the root of trust of the nodes that fetch it")
        return tpath, self.folder, renamed

    @staticmethod
    def _check_file_set(folder: Path, pin: Any) -> None:
        from grokfetch.integrity.verify import file_set_problems

        problems = file_set_problems(folder, pin)
        if problems:
            more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise UsageError(
                f"{folder}: does not hold the {len(pin.files)} files it pinned: "
                f"{'; '.join(problems[:3])}{more}; not seeding (repair it with "
                "`grokfetch get ... --repair`, or check it with `grokfetch verify`)"
            )

    def _drain_alerts(self) -> None:
        for a in self.ses.pop_alerts():
            if isinstance(a, lt.hash_failed_alert):
                self.say(
                    f"piece {a.piece_index} failed its hash check on disk "
                    f"({piece_files(self.h.torrent_file(), a.piece_index)}); not sent - "
                    f"find the damage with `grokfetch verify {self.folder}`"
                )

    def status(self) -> Progress:
        st = self.h.status()
        self._drain_alerts()
        return _status_progress(st, done=True, elapsed=time.monotonic() - self._t0,
                                fleet=self.fleet.observe(fleet_of(self.h)))

    def run(
        self,
        on_status: Callable[[Progress], None] | None = None,
        interval: float = 1.0,
        until: Callable[[Progress], bool] | None = None,
        *,
        until_complete: int | None = None,
        timeout: float | None = None,
    ) -> Progress:
        """Seed until Ctrl-C, ``until(progress)``, or ``until_complete`` peers were seen with
        every piece; return the last status.

        ``timeout`` (seconds) ends the run too: without ``until_complete`` that is a normal
        end; with it, a TorrentError saying how many nodes finished (exit 4), so an
        orchestrator waiting for N nodes learns that they did not all finish.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last = self.status()
        try:
            while until is None or not until(last):
                if until_complete is not None and last.fleet is not None \
                        and last.fleet.complete >= until_complete:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    if until_complete is not None:
                        done = last.fleet.complete if last.fleet is not None else 0
                        raise TorrentError(
                            f"{self.folder}: {done} of {until_complete} nodes complete after "
                            f"--seed-timeout {timeout:g} s"
                        )
                    break
                tick = time.monotonic() + interval
                while (left := tick - time.monotonic()) > 0:  # alerts are handled as they come
                    if self.ses.wait_for_alert(max(1, int(left * 1000))) is not None:
                        self._drain_alerts()
                last = self.status()
                if on_status is not None:
                    on_status(last)
        except KeyboardInterrupt:
            pass
        return self.status()

    def stop(self) -> None:
        if self.ses is not None:
            with contextlib.suppress(Exception):
                self.h.pause()
            self.ses = None
            self.h = None

    def __enter__(self) -> Seeder:
        if self.info is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
