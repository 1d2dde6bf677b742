"""Nothing escapes its folder; nothing half-written reaches its final name."""

from __future__ import annotations

import os

import pytest

from grokfetch.errors import UnsafePathError
from grokfetch.fsutil import (
    atomic_write,
    free_space,
    inside,
    os_errors_as_disk_errors,
    safe_relpath,
)


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


def test_free_space_of_a_folder_still_to_be_made_is_that_of_the_folder_above(tmp_path,
                                                                            monkeypatch):
    import shutil

    # Which folder is asked, not two readings of a shared disk that others write to.
    real = shutil.disk_usage
    asked = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: asked.append(p) or real(p))
    assert free_space(tmp_path / "not" / "yet") > 0
    assert asked == [tmp_path]


def test_an_unforeseen_os_error_is_one_disk_error_line_naming_the_place():
    from grokfetch.errors import DiskError

    @os_errors_as_disk_errors("dest")
    def stage(src: str, dest: str) -> None:
        raise PermissionError(13, "Permission denied")  # no filename, as os.fsync raises

    with pytest.raises(DiskError, match="^out/dir: Permission denied$"):
        stage("in", dest="out/dir")

    @os_errors_as_disk_errors("dest")
    def printing(dest: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):  # stdout went away: not the disk's fault
        printing("d")
