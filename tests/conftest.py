"""Shared fixtures: synthesized checkpoints and the golden tiny checkpoint."""

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

from grokfetch.synth import synthesize  # noqa: E402 (after the key folder is set)

HERE = Path(__file__).parent
GOLDEN = HERE / "data" / "golden"


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
