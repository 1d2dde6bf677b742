"""Filesystem helpers every stage shares: safe relative paths, atomic writes, free space.

Two rules hold everywhere in grokfetch:

* nothing is ever written outside the destination folder, whatever a torrent,
  manifest or config says (``safe_relpath`` / ``inside``);
* nothing is ever written to its final name directly: output goes to a
  process-unique temp name in the same folder, is fsynced, then renamed, and
  the temp file is removed if anything fails (``atomic_write``).

And one way to turn an OSError nobody foresaw into a one-line DiskError
(``os_errors_as_disk_errors``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import posixpath
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

from grokfetch.errors import CheckpointFormatError, DiskError, UnsafePathError, UsageError
from grokfetch.readguard import FileChangedError
from grokfetch.units import format_bytes

_P = ParamSpec("_P")
_R = TypeVar("_R")

TMP_MARK = ".grokfetch-tmp-"


def safe_relpath(rel: object, what: str = "path") -> str:
    """Return ``rel`` normalised, or raise UnsafePathError if it could escape its root.

    Refused: empty paths, absolute paths, ``..`` components, backslashes, NUL
    bytes and drive letters.  Accepted paths use ``/`` and have no ``.`` parts.
    """
    if not isinstance(rel, str) or rel == "":
        raise UnsafePathError(f"unsafe {what} {rel!r}: empty")
    if "\x00" in rel:
        raise UnsafePathError(f"unsafe {what} {rel!r}: contains a NUL byte")
    if "\\" in rel:
        raise UnsafePathError(f"unsafe {what} {rel!r}: contains a backslash")
    if rel.startswith("/") or (len(rel) >= 2 and rel[1] == ":"):
        raise UnsafePathError(f"unsafe {what} {rel!r}: absolute path")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"unsafe {what} {rel!r}: contains '..'")
    if not parts:
        raise UnsafePathError(f"unsafe {what} {rel!r}: names no file")
    return posixpath.join(*parts)


def inside(root: str | os.PathLike[str], rel: str, what: str = "path") -> Path:
    """Join ``rel`` (checked by safe_relpath) onto ``root`` and prove it stays inside.

    Also resolves symlinks already on disk, so a link planted in the folder
    cannot redirect a write elsewhere.
    """
    root_path = Path(root)
    target = root_path / safe_relpath(rel, what)
    real_root = os.path.realpath(root_path)
    real_target = os.path.realpath(target)
    if os.path.commonpath([real_root, real_target]) != real_root:
        raise UnsafePathError(f"unsafe {what} {rel!r}: resolves outside {root_path}")
    return target


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing [offset, offset + length) of ``fd`` to disk now,
    without waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; a no-op elsewhere).

    A download that fsyncs each file before it counts as done would otherwise wait at
    the end of every file for all of it to reach the disk; started as the bytes arrive,
    the writeback runs alongside the transfer and the final fsync has little left to do.
    """
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Any:
    """libc's sync_file_range (the os module has no binding for it), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def temp_name(path: str | os.PathLike[str]) -> Path:
    """A process-unique temp name beside ``path`` (same folder, so rename is atomic)."""
    p = Path(path)
    return p.with_name(f"{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}-{p.name}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *,
                 sync_dir: bool = True) -> Iterator[IO[bytes]]:
    """Open a temp file beside ``path``; on success fsync and rename it into place.

    On any exception the temp file is removed and ``path`` is left untouched.
    ``sync_dir=False`` leaves the folder's fsync (which makes the rename durable) to
    the caller, who does it once for many files: each fsync is a cache flush of the
    whole disk, which on a virtual disk stalls every writer for up to a second.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    f: IO[Any] | None = None
    try:
        # Opened inside the try: a SIGTERM (raised as an exception by the CLI's handler)
        # that lands just after the open must still remove the temp file.
        f = open(tmp, mode)  # noqa: SIM115 - closed below in every path
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, final)
        if sync_dir:
            fsync_dir(final.parent)
    except BaseException:
        # close() flushes what is buffered and fails again on a full disk: the temp
        # file must go all the same (a 0-byte .grokfetch-tmp-* was left behind)
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (with a trailing newline), atomically."""
    text = json.dumps(obj, indent=1, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def lock_dest(dest: str | os.PathLike[str], command: str, doing: str = "is writing into",
              lock_file: str | os.PathLike[str] | None = None) -> int:
    """An exclusive lock for one run per DEST (an fd to close; it dies with the process),
    or UsageError naming ``command`` when another run holds it.

    The lock is the file ``lock_file`` when given (get's, in its state folder), else
    the DEST folder itself, so a repack leaves no extra file among its outputs.
    """
    flags = getattr(os, "O_CLOEXEC", 0)
    if lock_file is not None:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | flags, 0o644)
    else:
        fd = os.open(dest, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | flags)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"{dest}: another `grokfetch {command}` {doing} this folder; "
            "wait for it to finish (or stop it) and rerun"
        ) from None
    except OSError:  # a filesystem without flock (some network mounts): run unlocked
        pass
    return fd


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` for hostile documents: nesting deep enough to exhaust the parser's
    recursion is a JSONDecodeError like any malformed document, not a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files a killed run left behind below ``folder``; return them."""
    removed = []
    for p in Path(folder).rglob(f"{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def free_space(path: str | os.PathLike[str]) -> int:
    """Bytes free on the filesystem that holds ``path``, or will hold it once created
    (the nearest folder above it that exists)."""
    import shutil  # here, not at the top: with bz2 and lzma it is ~4 ms of every start-up

    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_free_space(path: str | os.PathLike[str], need: int, free: int, *, who: str = "",
                     what: str = "", advice: str = "") -> None:
    """The one refusal of what does not fit, before anything is written: DiskError (exit 5)
    ``PATH: not enough free space: [WHO ]needs N[ WHAT], only F free[; ADVICE]``.

    ``free`` comes from the caller (``free_space(path)``, a seam tests replace)."""
    if need <= free:
        return
    raise DiskError(f"{path}: not enough free space: {who + ' ' if who else ''}needs "
                    f"{format_bytes(need)}{' ' + what if what else ''}, only "
                    f"{format_bytes(free)} free{'; ' + advice if advice else ''}")


def os_errors_as_disk_errors(place: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a stage's entry point: an OSError its checks did not foresee (permission
    denied, read-only file system, a path through a file) becomes one DiskError line (exit
    5) naming the file - or else the value of the parameter ``place`` - not a traceback.

    BrokenPipeError passes: it is the caller's stdout going away (``| head``), not the disk.
    """

    def decorate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return fn(*args, **kwargs)
            except BrokenPipeError:
                raise
            except FileChangedError as e:  # a source shrank or was rewritten under us
                raise CheckpointFormatError(e.filename, None, str(e.strerror)) from None
            except OSError as e:
                where = e.filename
                if where is None:
                    with contextlib.suppress(TypeError):
                        where = signature.bind_partial(*args, **kwargs).arguments.get(place)
                raise DiskError(f"{where if where is not None else place}: "
                                f"{e.strerror or e}") from e

        return wrapper

    return decorate


def rotational(path: str | os.PathLike[str]) -> bool:
    """Whether the block device holding ``path`` says it is rotational (Linux sysfs);
    False where it says not, or cannot tell (a network or overlay filesystem)."""
    try:
        return _rotational_device(os.stat(path).st_dev)
    except OSError:
        return False


@functools.cache
def _rotational_device(dev: int) -> bool:
    # A partition (/sys/dev/block/8:1) has no queue/ of its own: its disk's is one up.
    base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    for queue in (f"{base}/queue/rotational", f"{base}/../queue/rotational"):
        try:
            with open(queue) as f:
                return f.read().strip() == "1"
        except OSError:
            continue
    return False
