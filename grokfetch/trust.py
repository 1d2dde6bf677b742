"""Roots of trust: who vouches for a checkpoint's bytes, and how a pin proves it.

A root of trust is named by *who vouches*, never by which file happens to be
in the folder.  Anything in the folder can come from the sender (a copy made
with rsync, a mirror, another client), so a file found there counts only when
it is bound to something the sender cannot forge:

* a ``.torrent`` whose info-hash is a packaged model's published one, or the
  one the user asked ``get`` for (recorded, authenticated, in get's state
  folder);
* a pinned manifest that *this user* wrote: its last field, ``pin_tag``, is
  the HMAC-SHA256 of the exact bytes of the rest of the file, made with a
  per-user secret key kept under the user's config folder
  (``$GROKFETCH_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/grokfetch``, else
  ``~/.config/grokfetch``; created 0600 on the first pin).  The key never
  enters the folder: the manifest and, for ``verify --changed-only``, a record
  tagged the same way (``grokfetch.integrity.verified_record``) are all that is.  A pin
  that arrives from another machine fails the check: it is reported as
  "manifest of unknown origin" and vouches for nothing.

A pin records what proved its bytes (``pinned_by``, inside the authenticated
manifest): one ``PinRoot`` per root, e.g. the torrent's info-hash, the SHA-256
of the explicit manifest, or "first use" (nothing proved them: the pin then
only shows that nothing changed since).  ``ROOT_KINDS`` lists the kinds and
whether each proves content; a new kind (a signature, say) is one entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokfetch.errors import ManifestError, UsageError
from grokfetch.fsutil import atomic_write_bytes

KEY_NAME = "pin.key"
ROOTS_NAME = "roots.json"  # in get's state folder: the info-hashes the user asked `get` for

# kind -> (proves the bytes, how the report describes it)
ROOT_KINDS: dict[str, tuple[bool, str]] = {
    "torrent": (True, "torrent"),  # every byte passed the torrent's SHA-1 pieces
    "manifest": (True, "manifest"),  # every byte matched an explicit manifest's hashes
    "synth": (True, "written here by grokfetch synth"),  # generated and hashed as written
    "repack": (True, "written here by grokfetch repack"),  # proven iff its source was
    "signature": (True, "OMS signature by key"),  # an OMS signature that verified
    # every byte matched the SHA-256 a Hugging Face mirror publishes (its tree API's lfs.oid)
    "mirror-sha256": (True, "the mirror's SHA-256, revision"),
    "first-use": (False, "first use"),  # nothing proved the bytes: trust on first use
}


@dataclass(frozen=True)
class PinRoot:
    """One root that proved a pin's bytes: what it is, its digest, and when."""

    kind: str  # a key of ROOT_KINDS
    id: str | None = None  # torrent: info-hash; manifest: SHA-256 of its bytes
    label: str | None = None  # a few words for people: 'the published grok-1 torrent'
    time: str | None = None  # when the pin pass ran (UTC, ISO 8601)
    source: tuple[PinRoot, ...] = field(default=())  # repack: the roots of its source's pin

    @property
    def proven(self) -> bool:
        """Does this root prove content (first use does not; a repack only if its source did)?"""
        proves = ROOT_KINDS.get(self.kind, (False, ""))[0]
        if self.kind == "repack":
            return bool(self.source) and all(r.proven for r in self.source)
        return proves

    def words(self) -> str:
        what = ROOT_KINDS.get(self.kind, (False, self.kind))[1]
        if self.kind == "first-use":
            return "first use: proves only that nothing changed since"
        if self.kind == "repack":
            src = "; ".join(r.words() for r in self.source) or "a source nothing proved"
            return f"{what} from a checkpoint pinned by {src}"
        text = f"{what} {self.id[:12]}..." if self.id else what
        return text + (f" ({self.label})" if self.label else "")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "id": self.id, "label": self.label,
                             "time": self.time}
        if self.source:
            d["source"] = [r.to_dict() for r in self.source]
        return d

    @classmethod
    def from_dict(cls, d: Any, origin: str) -> PinRoot:
        if not isinstance(d, dict) or not isinstance(d.get("kind"), str):
            raise ManifestError(f"{origin}: pinned_by: each root needs a 'kind'")
        for k in ("id", "label", "time"):
            if d.get(k) is not None and not isinstance(d[k], str):
                raise ManifestError(f"{origin}: pinned_by: {k} must be a string or null")
        src = d.get("source") or []
        if not isinstance(src, list):
            raise ManifestError(f"{origin}: pinned_by: source must be a list")
        return cls(d["kind"], d.get("id"), d.get("label"), d.get("time"),
                   tuple(cls.from_dict(s, origin) for s in src))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def roots_proven(roots: tuple[PinRoot, ...] | list[PinRoot]) -> bool:
    return bool(roots) and all(r.proven for r in roots)


def roots_words(roots: tuple[PinRoot, ...] | list[PinRoot]) -> str:
    return "; ".join(r.words() for r in roots) or "nothing recorded"


# -- the key -----------------------------------------------------------------------------


def config_dir() -> Path:
    """Where the user's pin key lives (never inside a checkpoint folder)."""
    env = os.environ.get("GROKFETCH_CONFIG_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "grokfetch"


def _key(create: bool) -> bytes | None:
    """The per-user pin key; made (32 random bytes, mode 0600) on the first pin."""
    path = config_dir() / KEY_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    except OSError as e:
        raise UsageError(f"{path}: cannot read the pin key: {e.strerror or e}") from None
    if len(data) >= 32:
        return data
    if not create:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile
        return _key(create=False)
    except OSError as e:
        raise UsageError(f"{path}: cannot create the pin key: {e.strerror or e}") from None
    try:
        os.write(fd, secrets.token_bytes(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    return path.read_bytes()


def tag(data: bytes, purpose: str, *, create: bool = True) -> str:
    """HMAC-SHA256 of ``data`` under the user's key; ``purpose`` keeps uses apart."""
    key = _key(create)
    assert key is not None
    return hmac.new(key, purpose.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def authentic(data: bytes, purpose: str, tag_hex: str) -> bool:
    key = _key(create=False)
    if key is None or not isinstance(tag_hex, str):
        return False
    want = hmac.new(key, purpose.encode() + b"\0" + data, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, tag_hex)


# -- torrents the user asked for -----------------------------------------------------------


def _roots_file(state_dir: Path) -> Path:
    return state_dir / ROOTS_NAME


def remember_torrent(state_dir: Path, info_hash: str, what: str) -> None:
    """Record (authenticated) that the user asked ``get`` for this info-hash in this DEST."""
    known = asked_info_hashes(state_dir)
    if info_hash in known:
        return
    known[info_hash] = what
    body = json.dumps(known, sort_keys=True)
    doc = {"info_hashes": known, "hmac_sha256": tag(body.encode(), "roots")}
    atomic_write_bytes(_roots_file(state_dir), json.dumps(doc, indent=1).encode())


def asked_info_hashes(state_dir: Path) -> dict[str, str]:
    """info-hash -> what the user gave ``get`` (magnet, model, .torrent), if authentic."""
    with contextlib.suppress(OSError, ValueError):
        p = _roots_file(state_dir)
        if not stat.S_ISREG(os.stat(p).st_mode) or os.stat(p).st_size > 1 << 20:
            return {}
        doc = json.loads(p.read_bytes())
        known = doc.get("info_hashes") if isinstance(doc, dict) else None
        if isinstance(known, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in known.items()
        ):
            body = json.dumps(known, sort_keys=True).encode()
            if authentic(body, "roots", doc.get("hmac_sha256", "")):
                return dict(known)
    return {}
