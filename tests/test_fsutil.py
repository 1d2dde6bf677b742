"""Nothing escapes its folder; nothing half-written reaches its final name."""

from __future__ import annotations

import os

import pytest

from grokfetch.errors import UnsafePathError
from grokfetch.fsutil import atomic_write, inside, safe_relpath


def test_safe_relpath_normalises():
    assert safe_relpath("ckpt-0/./tensor00000_000") == "ckpt-0/tensor00000_000"


@pytest.mark.parametrize("bad", ["..", "a/../..", "/abs", "a\\b", "a\x00b", "", "C:x"])
def test_safe_relpath_refuses(bad):
    with pytest.raises(UnsafePathError):
        safe_relpath(bad)


def test_inside_refuses_symlink_escape(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="outside"):
        inside(root, "link/evil")
    assert inside(root, "ok/file") == root / "ok" / "file"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"new partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["out.bin"]
