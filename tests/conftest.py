"""Shared fixtures: synthesized checkpoints (shared helpers live in helpers.py)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The pin key lives in the user's config folder: give the whole session (and every
# grokfetch subprocess it starts, which inherits the environment) its own, so tests
# never read or write the real one.  Set before anything pins (synth does).
_CONFIG = tempfile.mkdtemp(prefix="grokfetch-test-config-")
os.environ["GROKFETCH_CONFIG_DIR"] = _CONFIG
atexit.register(shutil.rmtree, _CONFIG, True)

from helpers import PIECE  # noqa: E402

from grokfetch.format.metainfo import make_torrent  # noqa: E402
from grokfetch.synth import synthesize  # noqa: E402 (after the key folder is set)


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
