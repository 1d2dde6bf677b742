"""Shared fixtures: synthesized checkpoints and the golden tiny checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grokfetch.metainfo import make_torrent
from grokfetch.synth import synthesize

HERE = Path(__file__).parent
GOLDEN = HERE / "data" / "golden"
PIECE = 16 * 1024  # the torrents of the BitTorrent tests: libtorrent's smallest piece size


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    """Corrupt one byte in place (XOR with ``mask``): the smallest possible damage."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def by_path(report) -> dict:
    """A verify report's file results by relative path."""
    return {f.path: f for f in report.files}


@pytest.fixture(scope="session")
def mini_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthesized 'mini' checkpoint (12 layers, ~8 MB) with its pinned manifest.

    Shared by the whole session: READ-ONLY.  Copy it (``copy_ckpt``) before
    changing anything.
    """
    root = tmp_path_factory.mktemp("mini") / "grok-mini"
    synthesize(root, "mini", seed=0, chunk_size=64 * 1024)
    return root


@pytest.fixture
def copy_ckpt(tmp_path: Path, mini_ckpt: Path):
    """A private, writable copy of the mini checkpoint."""

    def _copy(name: str = "ckpt") -> Path:
        dest = tmp_path / name
        shutil.copytree(mini_ckpt, dest)
        return dest

    return _copy


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, mini_ckpt: Path) -> Path:
    """A writable copy of the mini checkpoint with its .torrent beside ckpt-0/ (for seeders)."""
    root = tmp_path_factory.mktemp("src") / "grok-mini"
    shutil.copytree(mini_ckpt, root)
    make_torrent(root, piece_size=PIECE)
    return root
