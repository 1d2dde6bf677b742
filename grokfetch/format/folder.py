"""A grokfetch folder: where each file it can hold lives, found by one locator.

A checkpoint *root* is the folder that holds ``ckpt-0/`` (the official
layout) and grokfetch's own files beside it: the pinned manifest, get's state
folder, the repack journal, an OMS signature, a saved ``.torrent``, an SGLang
index.  Every command also accepts ``ckpt-0/`` itself, a symlink to it, or a
torrent's root folder, whose name is not documented: so the tensor folder is
the one holding ``tensor00000_000``, not a folder of a given name.

``locate(path)`` decides root and tensor folder once, for every command;
``Folder`` names every file from there.  Anything found is hostile until a
root of trust vouches for it: a manifest name that is not a regular file (a
FIFO would hang the reader) is refused here, before anything opens it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from grokfetch.errors import UsageError
from grokfetch.format.layout import CKPT_DIR, file_name
from grokfetch.format.manifest import MANIFEST_NAME, check_regular
from grokfetch.fsutil import safe_relpath

# get's state folder in its DEST: resume data, the info-hash the user asked for, the
# lock, the done marker, and verify's record of what a full run proved.
STATE_DIR = ".grokfetch"
# In STATE_DIR: the manifest a partial get (--layers, --include) chose its files from.
SELECTION_MANIFEST = "manifest.json"
# The repack journal: one JSON line per finished output, so a killed run knows what
# finished; replaced by the folder's manifest when the run completes.
JOURNAL_NAME = ".grokfetch-repack-journal.jsonl"
INDEX_NAME = "model.safetensors.index.json"  # an SGLang repack's tensor -> shard map
SIGNATURE_NAME = "model.sig"  # where `grokfetch sign` (and model_signing) put the signature
TORRENT_SUFFIX = ".torrent"  # get saves the torrent it fetched as DEST/NAME.torrent

__all__ = ["CKPT_DIR", "INDEX_NAME", "JOURNAL_NAME", "MANIFEST_NAME", "SELECTION_MANIFEST",
           "SIGNATURE_NAME", "STATE_DIR", "TORRENT_SUFFIX", "Folder", "existing_folder",
           "find_ckpt_dir", "locate"]


@dataclass(frozen=True)
class Folder:
    """A folder as grokfetch sees it: its root and, for a checkpoint, the tensor folder."""

    root: Path
    ckpt_dir: Path | None  # the folder holding tensor00000_000 (ckpt-0/ or named otherwise)
    problem: str | None = None  # why there is no ckpt_dir, for commands that need one

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def journal_path(self) -> Path:
        return self.root / JOURNAL_NAME

    @property
    def signature_path(self) -> Path:
        return self.root / SIGNATURE_NAME

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def checkpoint(self) -> Path:
        """The tensor folder, or UsageError (exit 2) saying why there is none."""
        if self.ckpt_dir is None:
            raise UsageError(self.problem or f"{self.root}: no checkpoint here")
        return self.ckpt_dir

    def disk(self, rel: str) -> Path:
        """Where the file a manifest calls ``rel`` is on disk.

        ``ckpt-0/NAME`` lives in the folder that actually holds the tensors,
        whatever it is called (a torrent or mirror may name it differently).
        """
        rel = safe_relpath(rel, "manifest path")
        if self.ckpt_dir is not None and rel.startswith(CKPT_DIR + "/"):
            return self.ckpt_dir / rel[len(CKPT_DIR) + 1 :]
        return self.root / rel

    def rel(self, p: Path) -> str:
        """The manifest-style name of a file on disk (inverse of ``disk``)."""
        if self.ckpt_dir is not None and p.parent == self.ckpt_dir:
            return f"{CKPT_DIR}/{p.name}"
        return p.relative_to(self.root).as_posix()

    def torrents(self, given: Path | None = None) -> list[Path]:
        """The .torrent files ``get`` may have saved for this folder: in the folder
        given, the root, or get's destination above it (get saves DEST/NAME.torrent
        beside DEST/NAME/, and DEST holds its state folder).  Each file once."""
        folders = [given, self.root] if given is not None else [self.root]
        if (self.root.parent / STATE_DIR).is_dir():
            folders.append(self.root.parent)
        found: list[Path] = []
        seen: set[Path] = set()
        for d in folders:
            for t in sorted(d.glob(f"*{TORRENT_SUFFIX}")):
                if t.is_file() and t.resolve() not in seen:
                    seen.add(t.resolve())
                    found.append(t)
        return found


def find_ckpt_dir(path: str | os.PathLike[str]) -> Path:
    """The folder that holds ``tensor00000_000`` at or below ``path`` (depth <= 2)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file or folder")
    if not p.is_dir():
        raise UsageError(f"{p}: not a folder")
    for cand in (p, p / CKPT_DIR):
        if (cand / file_name(0)).exists():
            return cand
    hits = sorted(q.parent for q in p.glob(f"*/{file_name(0)}"))
    hits += sorted(q.parent for q in p.glob(f"*/*/{file_name(0)}"))
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise UsageError(f"{p}: holds more than one checkpoint ({', '.join(map(str, hits))}); "
                         "name one")
    raise UsageError(_no_checkpoint(p))


def existing_folder(path: str | os.PathLike[str]) -> Path:
    """``path``, or UsageError (exit 2) when it is no folder."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such folder")
    if not p.is_dir():
        raise UsageError(f"{p}: not a folder")
    return p


def _no_checkpoint(p: Path) -> str:
    return f"{p}: no checkpoint here (no {file_name(0)} in it or in {CKPT_DIR}/)"


def locate(path: str | os.PathLike[str]) -> Folder:
    """Root and tensor folder of ``path``, by one set of rules for every command.

    A pinned manifest decides the root: the folder given when it holds one, else
    the parent of a ``ckpt-0/`` given (or of the ``ckpt-0/`` a symlink points to).
    Without one, the tensor folder is found at or below ``path`` and the root is
    its parent when it is called ``ckpt-0``.  A folder with no tensor files (a
    repack output, a mirror of other files) is a Folder without ``ckpt_dir``.
    """
    p = existing_folder(path)
    near = [p] + [q.parent for q in (p, p.resolve()) if q.name == CKPT_DIR]
    for where in near:
        if os.path.lexists(where / MANIFEST_NAME):
            check_regular(where / MANIFEST_NAME)  # a folder or FIFO there: exit 2, never opened
    if (p / MANIFEST_NAME).is_file():  # a pinned checkpoint root or a repack output
        if (p / CKPT_DIR).is_dir():
            return Folder(p, p / CKPT_DIR)
        if (p / file_name(0)).exists():  # pinned inside a tensor folder named otherwise
            return Folder(p, p)
        return Folder(p, None, _no_checkpoint(p))
    if p.name == CKPT_DIR and (p.parent / MANIFEST_NAME).is_file():
        return Folder(p.parent, p)
    real = p.resolve()
    if real.name == CKPT_DIR and (real.parent / MANIFEST_NAME).is_file():
        return Folder(real.parent, real)  # a symlink to a pinned checkpoint's ckpt-0/
    try:
        ckpt = find_ckpt_dir(p)
    except UsageError as e:
        return Folder(p, None, str(e))  # not a checkpoint: a manifest or torrent lists files
    return Folder(ckpt.parent if ckpt.name == CKPT_DIR else ckpt, ckpt)
