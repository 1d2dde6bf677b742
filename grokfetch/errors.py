"""One exception hierarchy for the whole tool, and the exit codes it maps to.

Library code raises these; only ``grokfetch.cli`` turns them into an
``Error: ...`` line and an exit code.  Every message is one line that names
the file (and the offset, piece or tensor) it is about.
"""

from __future__ import annotations

# Exit codes, documented in the README.  Keep them stable: scripts depend on them.
EXIT_OK = 0
EXIT_PROBLEMS = 1  # the command ran and found problems (verify mismatch, smoke check failed)
EXIT_USAGE = 2  # could not run: bad arguments, unreadable or malformed manifest, unsafe path
EXIT_BAD_CHECKPOINT = 3  # a checkpoint file failed the safe reader's checks
EXIT_TORRENT = 4  # torrent / network problem (bad metadata, torrent disagrees with manifest)
EXIT_DISK = 5  # not enough free space, disk full or I/O error while writing
EXIT_UNPROVEN = 6  # verify: nothing wrong found, but no root of trust proved every file
EXIT_SIGNATURE = 7  # an OMS signature does not hold: wrong key, altered, untrusted, malformed
EXIT_INTERNAL = 70  # a bug: an unexpected exception (GROKFETCH_DEBUG=1 shows the traceback)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C / SIGTERM (state saved where applicable)
EXIT_BROKEN_PIPE = 141  # stdout's reader went away (`| head`): 128 + SIGPIPE, as for any tool


class GrokfetchError(Exception):
    """Base class: a problem the user can act on, reported as one line."""

    exit_code = EXIT_USAGE


class UsageError(GrokfetchError):
    """Bad arguments or an option combination that cannot work."""

    exit_code = EXIT_USAGE


class UnsafePathError(GrokfetchError):
    """A path from a manifest, torrent or config would escape its folder."""

    exit_code = EXIT_USAGE


class ManifestError(GrokfetchError):
    """A manifest is unreadable or malformed."""

    exit_code = EXIT_USAGE


class CheckpointFormatError(GrokfetchError):
    """A checkpoint file is not what the safe reader accepts.

    Carries the file, the byte offset and what was found there.
    """

    exit_code = EXIT_BAD_CHECKPOINT

    def __init__(self, path: object, offset: int | None, what: str):
        self.path = str(path)
        self.offset = offset
        self.what = what
        where = f"{self.path}" if offset is None else f"{self.path} at byte {offset}"
        super().__init__(f"{where}: {what}")


class PinRefused(GrokfetchError):
    """A file failed the root of trust in the pin pass: nothing was pinned."""

    exit_code = EXIT_PROBLEMS


class TorrentError(GrokfetchError):
    """The torrent or the swarm cannot give us what we need."""

    exit_code = EXIT_TORRENT


class SignatureError(GrokfetchError):
    """An OMS signature does not hold: malformed bundle, another key, a bad signature, an
    untrusted certificate, or a statement that contradicts itself."""

    exit_code = EXIT_SIGNATURE


class DiskError(GrokfetchError):
    """Not enough space, disk full, or an I/O error while writing."""

    exit_code = EXIT_DISK


class Interrupted(GrokfetchError):
    """The user stopped the run (Ctrl-C / SIGTERM); state was saved."""

    exit_code = EXIT_INTERRUPTED
