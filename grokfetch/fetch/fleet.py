"""What a seeder (or a leecher that keeps seeding) knows about the other nodes.

A platform engineer pushing one checkpoint to a hundred nodes asks the
seeder two things: how far along is each node, and when are they all done.
libtorrent answers per connection (``torrent_handle.get_peer_info()``: the
peer's id, address, the share of pieces it announced, its rates); this module
turns those snapshots into a fleet view that survives peers leaving: a node
that was seen with every piece counts as complete even after it disconnects.
A node that quits the instant it has its last piece may leave before the
seeder sees it complete: cluster nodes run `get --seed-while-needed`, which
stays connected while anyone still needs pieces.

Nodes are told apart by their BitTorrent peer id (random per session), not by
address: a cluster test runs every node on 127.0.0.1, and a node behind NAT
shares its address with others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PeerView:
    """One connected peer, as the seeder sees it."""

    peer_id: str  # hex of the 20-byte BitTorrent peer id
    address: str  # host:port of the connection
    progress: float  # share of the torrent's pieces it has announced, 0..1
    complete: bool  # it has every piece
    download_rate: int  # bytes/s it receives from us
    upload_rate: int  # bytes/s we receive from it
    uploaded_to: int  # payload bytes we sent it on this connection
    client: str

    @classmethod
    def from_peer_info(cls, p: Any) -> PeerView:
        host, port = p.ip[0], p.ip[1]
        # libtorrent reports a peer's own announcement (seed flag, or all pieces)
        complete = bool(p.flags & p.seed) or p.progress_ppm >= 1_000_000
        return cls(
            peer_id=str(p.pid),  # libtorrent's sha1_hash prints as hex
            address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            progress=round(p.progress_ppm / 1_000_000, 6),
            complete=complete,
            download_rate=int(p.payload_up_speed),
            upload_rate=int(p.payload_down_speed),
            uploaded_to=int(p.total_upload),
            client=str(p.client),
        )


@dataclass(frozen=True)
class FleetStatus:
    """The fleet view at one moment (also the ``fleet`` field of --json-progress lines)."""

    connected: int  # peers connected now
    complete: int  # distinct peers ever seen with every piece (connected or not)
    seen: int  # distinct peers ever connected
    needing: int  # connected peers that still lack pieces
    peers: list[PeerView] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self, expected: int | None = None) -> str:
        """'5 peers connected, 3 of 16 nodes complete, 2 still downloading'."""
        of = f" of {expected}" if expected is not None else ""
        return (
            f"{self.connected} peers connected, {self.complete}{of} nodes complete, "
            f"{self.needing} still downloading"
        )


class Fleet:
    """Accumulates peer snapshots: who has been seen, who has been seen complete."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._complete: set[str] = set()

    def observe(self, peers: Iterable[PeerView]) -> FleetStatus:
        now = [p for p in peers if p.peer_id.strip("0")]  # an all-zero id: handshake pending
        for p in now:
            self._seen.add(p.peer_id)
            if p.complete:
                self._complete.add(p.peer_id)
        return FleetStatus(
            connected=len(now),
            complete=len(self._complete),
            seen=len(self._seen),
            needing=sum(1 for p in now if not p.complete),
            peers=sorted(now, key=lambda p: (p.complete, p.progress, p.address)),
        )


def fleet_of(handle: Any) -> list[PeerView]:
    """The peers of a libtorrent torrent_handle, as PeerViews (web seeds left out)."""
    import libtorrent as lt

    out = []
    for p in handle.get_peer_info():
        if p.connection_type != lt.peer_info.standard_bittorrent:  # a web seed
            continue
        out.append(PeerView.from_peer_info(p))
    return out
