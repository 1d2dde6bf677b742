"""Records of finished outputs: DEST's manifest and the journal of an unfinished run.

Each finished output is appended to the journal in DEST (one JSON line,
fsynced within a second: ``Journal``), so a run killed at any point knows
what finished; a rerun skips outputs whose recipe is unchanged and whose
BLAKE3 still matches, and redoes the rest.  At the end the manifest replaces the journal.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from grokfetch.errors import GrokfetchError, UsageError
from grokfetch.format.folder import JOURNAL_NAME
from grokfetch.format.manifest import MANIFEST_NAME, FileEntry, load_manifest
from grokfetch.fsutil import loads_json
from grokfetch.hashing import blake3_file


def recipe(settings: Any, source: Any, arrays: Any, chunk_size: Any) -> str:
    """What makes an output's record what it is: same recipe + same BLAKE3 on disk = done."""
    return json.dumps([settings, source, arrays, chunk_size], sort_keys=True)


def load_records(dest: Path) -> tuple[dict[str, tuple[str, FileEntry]], dict[str, Any] | None]:
    """Finished outputs known from DEST's manifest and journal: rel -> (recipe, entry).

    Also returns the repack settings found there (None when DEST is fresh).
    A line cut short by a kill is ignored: its output is simply redone.
    """
    records: dict[str, tuple[str, FileEntry]] = {}
    settings = None
    mpath = dest / MANIFEST_NAME
    if mpath.is_file():
        m = load_manifest(mpath)
        if m.repack is None:  # e.g. a checkpoint's pinned manifest: never overwrite it
            raise UsageError(f"{dest}: holds a grokfetch manifest that is not a repack's "
                             f"({m.name}); repack into a folder of its own")
        else:
            settings = m.repack
            for e in m.files:
                if e.param is not None or e.source is not None:
                    records[e.path] = (recipe(m.repack, e.source, e.arrays, m.chunk_size), e)
    jpath = dest / JOURNAL_NAME
    if jpath.is_file():
        for line in jpath.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = loads_json(line)
                e = FileEntry.from_dict(rec["entry"], rec["chunk_size"], str(jpath))
            except (ValueError, KeyError, TypeError, GrokfetchError):
                continue
            settings = rec.get("repack", settings)
            records[e.path] = (recipe(rec.get("repack"), e.source, e.arrays, rec["chunk_size"]),
                               e)
    return records, settings


class Journal:
    """Append-only record of finished outputs (one JSON line each).

    A line is written as soon as its output is in place; it is fsynced at once when
    the last fsync is SYNC_INTERVAL old, else by the next one or by ``sync`` (at the
    end of the writes, however they end).  A kill loses nothing (the lines are in the
    page cache); a power cut may lose the last second of lines, and the rerun then
    rewrites those outputs.  Every fsync is a cache flush of the whole disk, during
    which no writer on it moves: one per output doubled the flushes of a repack.
    """

    SYNC_INTERVAL = 1.0  # seconds

    def __init__(self, path: Path, settings: dict[str, Any], chunk_size: int):
        self.path = path
        self.settings = settings
        self.chunk_size = chunk_size
        self.lock = threading.Lock()
        self._synced_at = -math.inf  # the first line is fsynced at once
        self._unsynced = False

    def touch(self) -> None:
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))

    def add(self, *entries: FileEntry) -> None:
        if not entries:
            return
        line = "".join(json.dumps({"repack": self.settings, "chunk_size": self.chunk_size,
                                   "entry": e.to_dict()}) + "\n" for e in entries)
        with self.lock:
            # O_NOFOLLOW: a symlink planted in DEST must not redirect the appends elsewhere.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                         0o644)
            try:
                os.write(fd, line.encode())
                self._unsynced = True
                if time.monotonic() - self._synced_at >= self.SYNC_INTERVAL:
                    self._fsync(fd)
            finally:
                os.close(fd)

    def sync(self) -> None:
        """fsync the lines written since the last fsync, if any."""
        with self.lock:
            if not self._unsynced:
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                self._fsync(fd)
            finally:
                os.close(fd)

    def _fsync(self, fd: int) -> None:
        os.fsync(fd)
        self._synced_at = time.monotonic()
        self._unsynced = False


def still_good(path: Path, entry: FileEntry) -> bool:
    """Is the file on disk the one the record describes (size, then BLAKE3)?  Only the
    whole-file hash is needed for that: one BLAKE3, on every core for a large file."""
    try:
        if path.stat().st_size != entry.size:
            return False
    except OSError:
        return False
    return blake3_file(path) == entry.blake3
