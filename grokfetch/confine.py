"""Let the kernel refuse writes outside a folder: Linux Landlock for the threads that write.

libtorrent opens the files it writes by path, so a folder inside DEST swapped
for a symlink while it runs would redirect its writes, and no check made from
outside libtorrent can close that window: between a check and the next
``open`` there is always a moment.  Landlock (Linux 5.13 and later, no
privileges needed) closes it: a thread restricted with it, and every thread it
starts, can create, write, rename or remove files only beneath the folders
named, whichever symlinks the path goes through (the kernel checks where the
file really is).  Reading stays unrestricted.

The restriction cannot be lifted, so it is never put on the caller's thread:
``confined_call`` runs a function on a new thread, restricts that thread
first, and returns the function's result.  A libtorrent session constructed
there starts its network and disk threads from it, so all of its writes are
confined, while the rest of the process (the pin, resume data, the config
folder) is not.  Where Landlock is missing (another OS, an old kernel, a
sandbox that filters the system calls) the function runs unconfined and the
caller falls back on its own checks (``fetch.torrent._check_still_inside``).
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# linux/landlock.h; the syscall numbers are the same on every architecture (generic table)
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Every right that changes the filesystem, by the ABI version that introduced it.
_WRITE_FILE, _REMOVE_DIR, _REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
_MAKE = sum(1 << b for b in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_REFER = 1 << 13  # ABI 2: link or rename across folders
_TRUNCATE = 1 << 14  # ABI 3


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - a Linux without a C library handle
        return None


def abi_version() -> int:
    """The Landlock ABI the kernel offers; 0 where there is none (or it is filtered)."""
    libc = _libc()
    if libc is None:
        return 0
    v = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0),
                     ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(v), 0)


def _write_rights(abi: int) -> int:
    rights = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    return rights


def _restrict_this_thread(beneath: list[Path]) -> bool:
    """Allow this thread (and the threads it starts) to write only beneath ``beneath``."""
    abi = abi_version()
    libc = _libc()
    if abi < 1 or libc is None:
        return False
    rights = _write_rights(abi)
    attr = ctypes.create_string_buffer(struct.pack("=Q", rights))  # handled_access_fs
    ruleset = libc.syscall(_CREATE_RULESET, attr, ctypes.c_size_t(len(attr.raw)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    try:
        for folder in beneath:
            fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd))
                if libc.syscall(_ADD_RULE, ctypes.c_int(ruleset),
                                ctypes.c_int(_RULE_PATH_BENEATH), rule, ctypes.c_uint32(0)):
                    return False
            finally:
                os.close(fd)
        # required of an unprivileged thread; it only stops set-uid programs gaining rights
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            return False
        return libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    finally:
        os.close(ruleset)


def confined_call(fn: Callable[[], T], beneath: list[Path]) -> tuple[T, bool]:
    """``fn()`` on a new thread whose writes the kernel keeps beneath ``beneath`` (each an
    existing folder); returns its result and whether the confinement took hold."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["confined"] = _restrict_this_thread(beneath)
            box["result"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="grokfetch-confined")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"], bool(box["confined"])  # type: ignore[return-value]
