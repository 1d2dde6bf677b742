"""What the filesystem said about each file when a full verification last proved it.

``verify --changed-only`` re-hashes only the files whose record changed.  The
record (``.grokfetch/verified.json`` in the checkpoint root) holds, per file,
its device, inode, size, mtime and ctime in nanoseconds, and when it was
verified.  It is bound to the exact bytes of the pinned manifest it was made
against (their SHA-256) and tagged with the user's pin key (HMAC,
``grokfetch.trust``), so a record copied from another machine or user, forged,
or left from an older pin vouches for nothing: it is ignored and every file is
re-hashed.

What it cannot see: bytes changed behind the filesystem's back (a raw write
to the block device, a filesystem or tool that restores or does not update
mtime and ctime, silent corruption).  Only a full verify, or a checksumming
filesystem, sees those; so an unchanged file is reported as UNCHANGED, never
as OK.

A file whose ctime or mtime is within ``RACY_NS`` of the moment it was looked
at is not recorded: on a filesystem with coarse timestamps a second write in
the same tick would leave its metadata as it was (git's "racy" entries).  The
next run re-hashes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from grokfetch.format.folder import STATE_DIR
from grokfetch.fsutil import atomic_write_bytes
from grokfetch.trust import authentic, tag

RECORD_NAME = "verified.json"  # in the checkpoint root's STATE_DIR
PURPOSE = "verified-record"  # keeps these tags apart from pins' (trust.tag)
RACY_NS = 1_000_000_000
_MAX_BYTES = 64 << 20

StatKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Verified:
    """One file's record: what stat said, and when the full verification ran (UTC ISO)."""

    key: StatKey
    at: str


def record_path(root: Path) -> Path:
    return root / STATE_DIR / RECORD_NAME


def _body(pin_sha256: str, files: dict[str, Verified]) -> bytes:
    doc = {"pin_sha256": pin_sha256,
           "files": {rel: [*v.key, v.at] for rel, v in sorted(files.items())}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


_TAG_FIELD = b',"hmac_sha256":"'  # how ``save`` writes the tag: the last field


def load(root: Path, pin_sha256: str) -> dict[str, Verified]:
    """The authentic record for the pin with these bytes, or {} (absent, forged, copied,
    another pin's, malformed, or not a regular file: never an error, just nothing).

    The tag is checked on the bytes as they are (``save`` writes the tagged body with the
    tag appended as its last field), before anything is parsed: re-serialising the
    record to check it cost more than the rest of an unchanged tree's re-check.
    """
    p = record_path(root)
    with contextlib.suppress(OSError, ValueError, TypeError, LookupError):
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_BYTES:
                return {}
            data = os.read(fd, st.st_size + 1)
        finally:
            os.close(fd)
        at = data.rfind(_TAG_FIELD)
        tail = data[at + len(_TAG_FIELD):]
        if at < 0 or len(tail) != 64 + 3 or not tail.endswith(b'"}\n'):
            return {}
        body = data[:at] + b"}"  # == _body() of the record the bytes hold
        if not authentic(body, PURPOSE, tail[:64].decode("ascii", "replace")):
            return {}
        doc = json.loads(body)  # written by this user's grokfetch: the tag vouches for it
        if not isinstance(doc, dict) or doc.get("pin_sha256") != pin_sha256:
            return {}
        raw = doc.get("files")
        if not isinstance(raw, dict):
            return {}
        return {rel: Verified((v[0], v[1], v[2], v[3], v[4]), v[5]) for rel, v in raw.items()}
    return {}


def racy(key: StatKey, looked_at_ns: int) -> bool:
    """Changed so close to ``looked_at_ns`` that a later write could keep the same stamps."""
    return max(key[3], key[4]) > looked_at_ns - RACY_NS


def save(root: Path, pin_sha256: str, files: dict[str, Verified]) -> Path:
    """Write the record (atomically, tagged); OSError when the folder cannot take it.

    Refuses a state folder that is a symbolic link: nothing is written outside root.
    """
    state = root / STATE_DIR
    if state.is_symlink() or (state.exists() and not state.is_dir()):
        raise OSError(f"{state}: not a folder")
    state.mkdir(exist_ok=True)
    body = _body(pin_sha256, files)
    p = record_path(root)
    # the tag as the last field, so ``load`` checks the bytes before parsing them
    atomic_write_bytes(p, body[:-1] + _TAG_FIELD + tag(body, PURPOSE).encode() + b'"}\n')
    return p


def now_ns() -> int:
    return time.time_ns()
