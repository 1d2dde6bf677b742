"""Shared fixtures: synthesized checkpoints (shared helpers live in helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grokfetch.synth import synthesize


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
