"""Reading a mapped file that another process may shrink, without dying of SIGBUS.

Touching a mapped page past the end of a file that was truncated meanwhile
kills the process with SIGBUS: no message, and the other files' verdicts
are lost.  Checking the size before each mapping narrows that window but
cannot close it.  A Linux *read lease* closes it: while we hold one, a
process that truncates the file or opens it for writing is blocked (up to
``/proc/sys/fs/lease-break-time``) until we let go, and we can see that it
wants to.  So a reader holds a lease while it maps the file, checks it
between windows, and on a break stops, unmaps and reports the file as
changed while being read.

Where no lease can be had (the file is open for writing elsewhere, not ours
without CAP_LEASE, a filesystem without leases, not Linux), ``lease`` says
so and the caller reads with ``pread`` instead: slower, never fatal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Iterator

try:
    import fcntl

    _F_SETLEASE = getattr(fcntl, "F_SETLEASE", None)
    _F_GETLEASE = getattr(fcntl, "F_GETLEASE", None)
    _F_SETSIG = getattr(fcntl, "F_SETSIG", None)
except ImportError:  # pragma: no cover - not POSIX
    _F_SETLEASE = _F_GETLEASE = _F_SETSIG = None

# The lease-break notice is a signal; SIGURG's default action is to ignore it (SIGIO,
# the default notice, would kill the process).  We poll the lease instead.
_NOTICE = getattr(signal, "SIGURG", 0)


class FileChangedError(OSError):
    """The file was truncated or opened for writing while it was being read."""

    def __init__(self, path: object, fd: int | None = None) -> None:
        if not path and fd is not None:  # name the file, whoever opened it
            with contextlib.suppress(OSError):
                path = os.readlink(f"/proc/self/fd/{fd}")
        super().__init__(errno.ESTALE, "changed while being read (truncated or opened for "
                         "writing by another program); check it again when it is left alone",
                         str(path))


class Lease:
    """A held read lease on an open file (``held`` False: none could be had)."""

    def __init__(self, fd: int, path: object) -> None:
        self.fd = fd
        self.path = path
        self.held = False
        if _F_SETLEASE is None or _F_GETLEASE is None:
            return
        try:
            if _F_SETSIG is not None:
                fcntl.fcntl(fd, _F_SETSIG, _NOTICE)
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
        except OSError:  # EAGAIN: open for writing elsewhere; EACCES, EINVAL: no leases here
            return
        self.held = True

    def broken(self) -> bool:
        """Another process wants to truncate or write the file (it waits for us)."""
        if not self.held or _F_GETLEASE is None:
            return False
        try:
            return bool(fcntl.fcntl(self.fd, _F_GETLEASE) != fcntl.F_RDLCK)
        except OSError:
            return True

    def check(self) -> None:
        """Raise FileChangedError (after letting go) when the lease is being broken."""
        if self.broken():
            self.release()
            raise FileChangedError(self.path, self.fd)

    def release(self) -> None:
        if self.held and _F_SETLEASE is not None:
            self.held = False
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, _F_SETLEASE, fcntl.F_UNLCK)


@contextlib.contextmanager
def lease(fd: int, path: object = "") -> Iterator[Lease]:
    """Hold a read lease on ``fd`` for the block; see the module docstring."""
    le = Lease(fd, path)
    try:
        yield le
    finally:
        le.release()

