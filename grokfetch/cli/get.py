"""``grokfetch get`` and ``grokfetch seed``: the BitTorrent client's front end.

Everything here is option parsing and rendering; the work is in
``grokfetch.fetch.torrent``.  Progress goes to stderr (a tqdm bar) or, with
``--json-progress``, to stdout as one JSON object per line:

    {"event": "message", "message": "..."}        things worth saying
    {"event": "progress", "state": ..., ...}      once a second (torrent.Progress)
    {"event": "done", ...}                        get: the DownloadResult
    {"event": "seeding", "magnet": ..., ...}      seed: what to give `get`
    {"event": "stopped", ...}                     seed: last status on exit
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from grokfetch.cli.base import cli, json_errors, sigterm_as_interrupt
from grokfetch.errors import UsageError
from grokfetch.fetch import torrent
from grokfetch.names import escape_text
from grokfetch.progress import NullBar, bytes_bar
from grokfetch.units import format_bytes

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_rate(text: str | None) -> int:
    """'0', '500K', '20M', '1G' (bytes per second, binary units) -> int."""
    if text is None:
        return 0
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] != "" else ""
    num = t[: len(t) - len(unit)] if unit else t
    try:
        value = float(num)
    except ValueError:
        raise UsageError(f"rate {text!r}: expected bytes/s like 500K, 20M or 0") from None
    if value < 0:
        raise UsageError(f"rate {text!r} is negative")
    return int(value * _UNITS[unit])


class Renderer:
    """Turns torrent callbacks into a tqdm bar, JSON lines, or nothing."""

    def __init__(self, quiet: bool, json_progress: bool) -> None:
        self.quiet = quiet
        self.json = json_progress
        self.bar: Any = None

    def emit(self, obj: dict[str, Any]) -> None:
        click.echo(json.dumps(obj, default=str))
        sys.stdout.flush()

    def message(self, text: str) -> None:
        if self.json:
            self.emit({"event": "message", "message": text})
        elif not self.quiet:
            text = escape_text(text)  # file names from a torrent reach the terminal escaped
            if hasattr(self.bar, "write"):  # tqdm: print above the bar, not through it
                self.bar.write(text)
            else:
                click.echo(text, err=True)

    def progress(self, p: torrent.Progress) -> None:
        if self.json:  # the library calls once a second (progress_interval)
            self.emit({"event": "progress", **p.to_dict()})
            return
        total = p.wanted if p.wanted > 0 else p.expected  # before the metadata: the manifest's
        if self.quiet or total <= 0:
            return
        if self.bar is None:  # what is already on disk is shown, not counted as speed
            self.bar = bytes_bar(total, "get", initial=p.wanted_done)
        else:
            if getattr(self.bar, "total", total) != total:
                self.bar.total = total
            self.bar.update(p.wanted_done - self.bar.n)
        self.bar.set_postfix_str(postfix(p), refresh=p.wanted <= 0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def pin_bar(self, total: int, desc: str) -> Any:
        """The bar of get's BLAKE3 pin pass: the download bar ends, this one starts."""
        self.close()
        if self.json:
            self.emit({"event": "message", "message": f"pinning: hashing {total:,} bytes"})
            return NullBar()
        return NullBar() if self.quiet else bytes_bar(total, desc)

    def seed_status(self, p: torrent.Progress) -> None:
        """seed: JSON lines, or a bar of bytes sent (plain lines in a log)."""
        if self.json:
            self.emit({"event": "progress", **p.to_dict()})
            return
        if self.quiet:
            return
        if self.bar is None:
            self.bar = bytes_bar(None, "seed")  # no total: a counter
        self.bar.update(p.uploaded - self.bar.n)
        self.bar.set_postfix_str(f"sent, {p.peers} peers", refresh=False)


def postfix(p: torrent.Progress) -> str:
    """The bar's tail: peers and state, the rate of each source, or the pre-metadata status."""
    if p.wanted <= 0 and p.status:
        return f"{p.state}: {p.status}"
    text = f"{p.peers} peers, {p.seeds} seeds, {p.state}"
    s = p.sources
    if s and (s.get("mirror_rate") or s.get("mirror_proven")):
        text += (f"; swarm {format_bytes(s.get('swarm_rate', 0))}/s, "
                 f"mirror {format_bytes(s.get('mirror_rate', 0))}/s")
    return text


def _net(listen: str, no_dht: bool, no_utp: bool, down: str | None, up: str | None) -> Any:
    for part in listen.split(","):
        torrent.parse_hostport(part, "--listen", allow_zero=True)
    return torrent.NetOptions(
        listen=listen,
        dht=not no_dht,
        utp=not no_utp,
        max_download_rate=parse_rate(down),
        max_upload_rate=parse_rate(up),
    )


def _net_options(f: Any) -> Any:
    opts = [
        click.option("--listen", default="0.0.0.0:6881", show_default=True, metavar="HOST:PORT",
                     help="HOST:PORT to accept peers on (port 0: any free port)."),
        click.option("--no-dht", is_flag=True,
                     help="No DHT, local peer discovery, UPnP or NAT-PMP: only the peers, "
                          "trackers and web seeds you name (clusters, firewalls, tests)."),
        click.option("--no-utp", is_flag=True, help="TCP only (uTP is far slower on fast links)."),
        click.option("--max-upload-rate", metavar="RATE",
                     help="Bytes/s, K/M/G suffixes (binary); 0 = unlimited."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@cli.command("get")
@click.argument("source", required=False, metavar="[MODEL|MAGNET|TORRENT_FILE]")
@click.option("--dest", required=True, type=click.Path(file_okay=False),
              help="Folder to download into (created if missing; the .torrent is saved here).")
@click.option("--manifest", metavar="NAME|PATH",
              help="Check the torrent's files against this manifest (default: the model's, "
                   "or the packaged manifest with the same info-hash).")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files whose path or name matches (repeatable).")
@click.option("--layers", metavar="SPEC",
              help="Only these decoder layers ('0-3,10'), plus the embedding and final norm.")
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT",
              help="Connect to this peer directly (repeatable), e.g. a seeder in the cluster.")
@click.option("--web-seed", "web_seeds", multiple=True, metavar="URL",
              help="BEP 19 HTTP source: URL of the folder holding the torrent's root folder.")
@click.option("--tracker", "trackers", multiple=True, metavar="URL", help="Extra tracker.")
@click.option("--max-download-rate", metavar="RATE",
              help="Bytes/s, K/M/G suffixes (binary); 0 = unlimited.")
@_net_options
@click.option("--source", "source_mode", type=click.Choice(["auto", "swarm", "mirror"]),
              help="auto (the default): the swarm, the published .torrent URL for the "
                   "metadata, and the manifest's Hugging Face mirror for pieces the swarm "
                   "does not give (whole files when no metadata comes); swarm: BitTorrent "
                   "only (the default for a magnet naming a seeder, as `seed` prints: the "
                   "nodes of a cluster never go to the mirror); mirror: whole files from the "
                   "mirror, each proven by its published SHA-256.")
@click.option("--mirror", "mirror_url", metavar="URL",
              help="Hugging Face compatible endpoint (default: HF_ENDPOINT, else "
                   "https://huggingface.co). HF_TOKEN is sent to it, never to its CDN.")
@click.option("--max-mirror-connections", type=click.IntRange(min=1), default=8,
              show_default=True, help="Connections to each mirror host at a time.")
@click.option("--metadata-timeout", type=click.FloatRange(min=0), default=60.0,
              show_default=True,
              help="auto: seconds to wait for metadata (peers or the torrent URL) before "
                   "fetching whole files from the mirror.")
@click.option("--repair", is_flag=True,
              help="Recheck the data on disk and download only the pieces that are bad.")
@click.option("--no-space-check", is_flag=True, help="Start even if DEST looks too small.")
@click.option("--seed", "seed_after", is_flag=True,
              help="Keep seeding when done (until Ctrl-C or --seed-ratio).")
@click.option("--seed-ratio", type=click.FloatRange(min=0), help="Stop seeding at this ratio.")
@click.option("--seed-while-needed", is_flag=True,
              help="When done, keep seeding while a connected peer still lacks pieces; stop "
                   "once none has for --idle-timeout seconds (cluster nodes).")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=15.0, show_default=True,
              metavar="SECONDS", help="With --seed-while-needed: how long no peer may need a "
                                      "piece before this node stops seeding.")
@click.option("--resume-interval", type=click.FloatRange(min=0.1), default=30.0,
              show_default=True, help="Seconds between resume-data saves.")
@click.option("--timeout", type=click.FloatRange(min=1), help="Give up after SECONDS (exit 4).")
@click.option("--stall-timeout", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Give up when no data arrived for SECONDS (exit 4, state saved); a stall "
                   "is reported after 60 s (or half this) either way.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages.")
@click.option("--json-progress", is_flag=True,
              help="One JSON object per line on stdout: messages, progress each second, result.")
def get_cmd(source: str | None, dest: str, manifest: str | None, include: tuple[str, ...],
            layers: str | None, peers: tuple[str, ...], web_seeds: tuple[str, ...],
            trackers: tuple[str, ...], max_download_rate: str | None, source_mode: str | None,
            mirror_url: str | None, max_mirror_connections: int, metadata_timeout: float,
            listen: str,
            no_dht: bool, no_utp: bool, max_upload_rate: str | None, repair: bool,
            no_space_check: bool, seed_after: bool, seed_ratio: float | None,
            seed_while_needed: bool, idle_timeout: float, resume_interval: float,
            timeout: float | None, stall_timeout: float | None, quiet: bool,
            json_progress: bool) -> None:
    """Download a checkpoint with BitTorrent, verify every piece, pin its manifest.

    SOURCE is a model name from the packaged manifests (default grok-1), a
    magnet link or a .torrent file.  Rerun the same command to continue after
    Ctrl-C, a crash or a full disk: nothing good is downloaded twice.

    \b
    Exit codes: 0 done, 2 bad arguments or an unsafe path in the torrent,
    3 a file the mirror's hash proved fails the safe reader,
    4 torrent/network problem (metadata disagrees with the manifest, --timeout,
    a .torrent that is not the magnet's, the mirror's bytes failing their hash twice),
    5 not enough space or a disk error (state saved), 130 interrupted (state saved).
    Once every selected byte is verified, DEST/.grokfetch/done.json is written
    (what readiness probes wait for).
    """
    json_errors("lines" if json_progress else None)
    if seed_ratio is not None and not seed_after:
        raise UsageError("--seed-ratio needs --seed")
    if seed_while_needed and seed_after:
        raise UsageError("--seed-while-needed and --seed are two ways to stop seeding: pick one")
    net = _net(listen, no_dht, no_utp, max_download_rate, max_upload_rate)
    from grokfetch.fetch.mirror import MirrorOptions, endpoint_from

    mirror = MirrorOptions(endpoint=endpoint_from(mirror_url),
                           max_connections=max_mirror_connections)
    r = Renderer(quiet, json_progress)
    try:
        with sigterm_as_interrupt():
            result = torrent.download(
                source,
                dest,
                manifest=manifest,
                peers=peers,
                include=include,
                layers=layers,
                net=net,
                web_seeds=web_seeds,
                trackers=trackers,
                repair=repair,
                space_check=not no_space_check,
                seed=seed_after,
                seed_ratio=seed_ratio,
                seed_while_needed=idle_timeout if seed_while_needed else None,
                resume_interval=resume_interval,
                timeout=timeout,
                stall_timeout=stall_timeout,
                progress_interval=1.0 if json_progress else 0.25,
                on_progress=r.progress,
                on_message=r.message,
                sources=source_mode,
                mirror=mirror,
                metadata_timeout=metadata_timeout,
                pin_progress=r.pin_bar,
            )
    finally:
        r.close()
    if json_progress:
        r.emit({"event": "done", **result.to_dict()})
        return
    if not quiet:
        rate = format_bytes(result.downloaded / max(result.elapsed, 1e-6))
        proof = getattr(result, "root_of_trust", None) or "by their torrent piece hashes"
        click.echo(
            f"{result.root}: {result.files} files, {result.wanted:,} bytes verified ({proof}); "
            f"downloaded {result.downloaded:,} bytes in {result.elapsed:.1f} s ({rate}/s)",
            err=True,
        )
    click.echo(str(result.manifest_path) if result.manifest_path else str(result.root))


@cli.command("seed")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--torrent", "torrent_file", type=click.Path(exists=True, dir_okay=False),
              help="The .torrent to seed (default: the one `get` saved, else one is made).")
@click.option("--web-seed", "web_seeds", multiple=True, metavar="URL",
              help="Put this BEP 19 URL into a newly made torrent.")
@_net_options
@click.option("--advertise", metavar="HOST:PORT",
              help="Address other nodes reach this seeder at, put into the magnet (default: "
                   "the --listen host, else the interface holding the default route).")
@click.option("--full-check", is_flag=True,
              help="Hash every piece before seeding even when a pinned manifest is present.")
@click.option("--until-complete", type=click.IntRange(min=1), metavar="N",
              help="Exit (0) once N distinct peers have been seen with every piece.")
@click.option("--seed-timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Stop after SECONDS; with --until-complete, exit 4 if fewer finished.")
@click.option("--super-seed", is_flag=True,
              help="For a fan-out to many nodes: send each piece about once (BEP 16 "
                   "super-seeding, every peer unchoked) and let the nodes trade the rest.  "
                   "Each peer gets its first piece about 10 s after it connects, and a "
                   "lone peer downloads slowly: not for one or two nodes.")
@click.option("--status-interval", type=click.FloatRange(min=1), default=10.0,
              show_default=True, metavar="SECONDS",
              help="How often the fleet line (peers, nodes complete, upload) is printed.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the magnet link.")
@click.option("--json-progress", is_flag=True,
              help="JSON lines on stdout: the magnet first, then status each second.")
def seed_cmd(folder: str, torrent_file: str | None, web_seeds: tuple[str, ...], listen: str,
             no_dht: bool, no_utp: bool, max_upload_rate: str | None, advertise: str | None,
             full_check: bool, until_complete: int | None, seed_timeout: float | None,
             super_seed: bool, status_interval: float, quiet: bool,
             json_progress: bool) -> None:
    """Verify and seed a checkpoint FOLDER; print its magnet link with this host as a peer.

    With a pinned manifest each piece is checked against the torrent when it
    is first sent; otherwise every piece is hashed before seeding starts.
    Other nodes fetch it with `grokfetch get MAGNET --dest DIR` (the magnet
    names this seeder) and share among themselves.  Stop with Ctrl-C or
    SIGTERM (exit 0).
    """
    json_errors("lines" if json_progress else None)
    net = _net(listen, no_dht, no_utp, None, max_upload_rate)
    r = Renderer(quiet, json_progress)
    seeder = torrent.Seeder(folder, torrent=torrent_file, net=net, web_seeds=web_seeds,
                            full_check=full_check, on_message=r.message, advertise=advertise,
                            super_seed=super_seed)
    with sigterm_as_interrupt():
        try:
            info = seeder.start()
        except KeyboardInterrupt:
            seeder.stop()
            raise
        if json_progress:
            r.emit({"event": "seeding", "magnet": info.magnet, "port": info.port,
                    "info_hash": info.info_hash, "torrent": str(info.torrent_path),
                    "verified": info.verified, "total": info.total, "have": info.have})
        else:
            click.echo(info.magnet)
            sys.stdout.flush()
            if not quiet:
                click.echo(f"seeding {info.folder} ({info.total:,} bytes, port {info.port}, "
                           f"pieces checked {info.verified}); Ctrl-C to stop", err=True)

        fleet_line = FleetLine(info.total, until_complete, status_interval)

        def show(p: torrent.Progress) -> None:
            r.seed_status(p)  # JSON lines (each with the fleet), or the bar of bytes sent
            if not json_progress and not quiet and (line := fleet_line.due(p)) is not None:
                r.message(line)  # above the bar

        try:
            last = seeder.run(on_status=show, until_complete=until_complete,
                              timeout=seed_timeout)
        finally:
            r.close()
            seeder.stop()
    if json_progress:
        r.emit({"event": "stopped", **last.to_dict()})
    elif not quiet:
        click.echo(f"stopped: {fleet_line.text(last)}", err=True)


class FleetLine:
    """The seeder's periodic status line: printed when it changes, at most every ``interval`` s."""

    def __init__(self, total: int, expected: int | None, interval: float) -> None:
        self.total = max(1, total)
        self.expected = expected
        self.interval = interval
        self.last_text: str | None = None
        self.last_at = 0.0

    def text(self, p: torrent.Progress) -> str:
        fleet = p.fleet.line(self.expected) if p.fleet is not None else f"{p.peers} peers"
        return (
            f"{fleet}; uploading {format_bytes(p.upload_rate)}/s, uploaded "
            f"{format_bytes(p.uploaded)} ({p.uploaded / self.total:.2f}x the size)"
        )

    def due(self, p: torrent.Progress) -> str | None:
        import time

        text = self.text(p)
        key = text.split(";")[0]  # the rate changes every tick; the fleet is what matters
        now = time.monotonic()
        if key == self.last_text and now - self.last_at < self.interval:
            return None
        if now - self.last_at < 1.0 and self.last_text is not None:
            return None
        self.last_text, self.last_at = key, now
        return text
