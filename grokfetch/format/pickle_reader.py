"""Read a checkpoint parameter file without unpickling it.

``pickle.load`` on a checkpoint file runs whatever the file names; the
official loader does exactly that.  This reader instead walks the opcode
stream itself, as data: it recognises only the handful of opcodes and the
six globals that numpy 1.x (or 2.x) + pickle protocol 4 produce for a plain
``ndarray`` or a ``QuantizedWeight8bit`` dataclass, never imports or calls
anything, and never reads an array payload - it records where each payload
lies (offset, length) and skips over it.  Arrays are then opened as
read-only ``np.memmap`` views of the file: zero-copy.

Anything unexpected raises ``CheckpointFormatError`` naming the file, the
byte offset and what was found there.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grokfetch.errors import CheckpointFormatError
from grokfetch.format.arrays import BFLOAT16, ArrayRef
from grokfetch.names import escape, shorten

# The only globals a checkpoint file may name (docs/FORMAT.md, "The pickle files").
_RECONSTRUCT = {
    ("numpy.core.multiarray", "_reconstruct"),  # numpy 1.x, as the checkpoint was written
    ("numpy._core.multiarray", "_reconstruct"),  # numpy 2.x spelling
}
_NDARRAY = ("numpy", "ndarray")
_DTYPE = ("numpy", "dtype")
_BFLOAT16 = ("ml_dtypes", "bfloat16")
_QUANTIZED = ("__main__", "QuantizedWeight8bit")
ALLOWED_GLOBALS = frozenset(_RECONSTRUCT | {_NDARRAY, _DTYPE, _BFLOAT16, _QUANTIZED})

# Plain numeric dtypes a checkpoint array may have (typestr -> dtype).
_TYPESTRS = {
    f"{k}{n}": np.dtype(f"<{k}{n}") if n > 1 else np.dtype(f"{k}{n}")
    for k, sizes in (("f", (2, 4, 8)), ("i", (1, 2, 4, 8)), ("u", (1, 2, 4, 8)))
    for n in sizes
}
_TYPESTRS["b1"] = np.dtype("?")

_MAX_MEMO = 4096  # real files memoise < 40 objects; a bound stops memory abuse
_MAX_STACK = 256
_MAX_STR = 1024
_MAX_NDIM = 8
_SMALL_BYTES = 64  # bytes payloads up to this size are read (e.g. the b'b' marker)
# Bounds on cost: a real file is < 100 opcodes, nests objects 3 deep and its one dict
# has 2 keys.  200,000 nested tuples or a 10^6-key dict are refused at once, and
# nothing recursive (repr, ==) ever sees a deep object.
_MAX_OPS = 10_000
_MAX_DEPTH = 8
_MAX_NODES = 1024
_MAX_DICT = 64


@dataclass(frozen=True)
class ParamFile:
    """What one checkpoint file holds, as found by ``scan``."""

    path: Path
    size: int
    kind: str  # 'ndarray' or 'quantized'
    arrays: dict[str, ArrayRef]  # 'array', or 'weight' and 'scales' of a QuantizedWeight8bit
    numpy_spelling: int  # 1: numpy.core.multiarray (as released), 2: numpy._core

    def open(self, name: str) -> np.ndarray:
        """A read-only, zero-copy view of one array (np.memmap)."""
        a = self.arrays[name]
        if a.nbytes == 0:
            out = np.zeros(a.shape, a.dtype)
            out.flags.writeable = False
            return out
        return np.memmap(self.path, dtype=a.dtype, mode="r", offset=a.offset, shape=a.shape)

    def load(self) -> dict[str, np.ndarray]:
        """All arrays of the file as read-only memmaps."""
        return {name: self.open(name) for name in self.arrays}

    @property
    def payload_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


# -- values on the virtual stack -----------------------------------------------------


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Bytes:
    offset: int
    length: int
    value: bytes | None  # only for small payloads


@dataclass
class _DType:
    dtype: np.dtype
    built: bool = False


@dataclass
class _PendingArray:
    """``_reconstruct(ndarray, (0,), b'b')`` before its BUILD sets the state."""

    offset: int
    info: ArrayRef | None = None


@dataclass
class _Quantized:
    offset: int
    state: dict[str, Any] | None = None


class _Mark:
    pass


_MARK = _Mark()


class _Walker:
    def __init__(self, path: Path, buf: _PreadBuffer, size: int):
        self.path = path
        self.buf = buf
        self.size = size
        self.pos = 0
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.spelling = 1

    # -- helpers -----------------------------------------------------------------
    def fail(self, what: str, offset: int | None = None) -> CheckpointFormatError:
        return CheckpointFormatError(self.path, self.pos if offset is None else offset,
                                     shorten(what))

    def check_nesting(self, items: Any, at: int) -> None:
        """Refuse objects nested deeper than _MAX_DEPTH or made of more than _MAX_NODES
        values (breadth first, without recursion; a memo cycle counts as too many)."""
        level, depth, nodes = list(items), 1, 0
        while level:
            nxt: list[Any] = []
            for v in level:
                nodes += 1
                if isinstance(v, tuple):
                    nxt.extend(v)
                elif isinstance(v, dict):
                    nxt.extend(v.values())
                elif isinstance(v, _Quantized) and v.state is not None:
                    nxt.extend(v.state.values())
            if nodes > _MAX_NODES:
                raise self.fail(f"object of more than {_MAX_NODES} values (a checkpoint "
                                "file's are a few dozen)", at)
            if nxt:
                depth += 1
                if depth > _MAX_DEPTH:
                    raise self.fail(f"objects nested more than {_MAX_DEPTH} deep (a "
                                    "checkpoint file's are 3 deep)", at)
            level = nxt

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated: {what} needs {n} bytes, "
                            f"{max(self.size - self.pos, 0)} left in the file")
        b = bytes(self.buf[self.pos:self.pos + n])
        if len(b) != n:
            raise self.fail(f"truncated while being read: {what} needs {n} bytes, "
                            f"{len(b)} left (the file shrank)")
        self.pos += n
        return b

    def u(self, fmt: str, what: str) -> int:
        n = struct.calcsize(fmt)
        return int(struct.unpack(fmt, self.take(n, what))[0])

    def push(self, v: Any) -> None:
        if len(self.stack) >= _MAX_STACK:
            raise self.fail("pickle stack too deep")
        self.stack.append(v)

    def pop(self, at: int) -> Any:
        if not self.stack:
            raise self.fail("pickle stack underflow", at)
        return self.stack.pop()

    def pop_mark(self, at: int) -> list[Any]:
        if not self.marks:
            raise self.fail("no MARK on the stack", at)
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def text(self, n: int, at: int) -> str:
        if n > _MAX_STR:
            raise self.fail(f"string of {n} bytes is longer than any in a checkpoint", at)
        raw = self.take(n, "string")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not valid UTF-8", at) from None

    def payload(self, n: int, at: int) -> _Bytes:
        start = self.pos
        if start + n > self.size:
            raise self.fail(
                f"truncated payload: {n} bytes announced, {self.size - start} left in the file",
                at,
            )
        value = bytes(self.buf[start:start + n]) if n <= _SMALL_BYTES else None
        if value is not None and len(value) != n:
            raise self.fail("truncated while being read (the file shrank)", at)
        self.pos = start + n  # skip the payload without reading it
        return _Bytes(start, n, value)

    def memo_put(self, idx: int, at: int) -> None:
        if not self.stack:
            raise self.fail("memo store on an empty stack", at)
        if idx >= _MAX_MEMO or len(self.memo) >= _MAX_MEMO:
            raise self.fail("too many memo entries", at)
        self.memo[idx] = self.stack[-1]

    def memo_get(self, idx: int, at: int) -> None:
        if idx not in self.memo:
            raise self.fail(f"memo entry {idx} was never stored", at)
        self.push(self.memo[idx])

    # -- semantics -----------------------------------------------------------------
    def global_(self, module: str, name: str, at: int) -> _Global:
        if (module, name) not in ALLOWED_GLOBALS:
            raise self.fail(f"forbidden global {escape(module)}.{escape(name)} (only numpy "
                            f"array and QuantizedWeight8bit pickles are accepted)", at)
        if (module, name) == ("numpy._core.multiarray", "_reconstruct"):
            self.spelling = 2
        return _Global(module, name)

    def reduce(self, at: int) -> None:
        args = self.pop(at)
        func = self.pop(at)
        key = (func.module, func.name) if isinstance(func, _Global) else None
        if key in _RECONSTRUCT:
            if not (isinstance(args, tuple) and len(args) == 3
                    and args[0] == _Global(*_NDARRAY) and args[1] == (0,)
                    and isinstance(args[2], _Bytes) and args[2].value == b"b"):
                raise self.fail("unexpected arguments to numpy _reconstruct", at)
            self.push(_PendingArray(at))
        elif key == _DTYPE:
            self.push(_DType(self.dtype_from_args(args, at)))
        else:
            raise self.fail(f"REDUCE of {self.describe(func)} is not allowed", at)

    def dtype_from_args(self, args: Any, at: int) -> np.dtype:
        if not (isinstance(args, tuple) and len(args) == 3 and args[1] is False
                and args[2] is True):
            raise self.fail("unexpected arguments to numpy.dtype", at)
        spec = args[0]
        if spec == _Global(*_BFLOAT16):
            return BFLOAT16
        if isinstance(spec, str) and spec in _TYPESTRS:
            return _TYPESTRS[spec]
        raise self.fail(f"unsupported dtype {self.describe(spec)}", at)

    def build(self, at: int) -> None:
        state = self.pop(at)
        obj = self.pop(at)
        if isinstance(obj, _DType):
            self.build_dtype(obj, state, at)
        elif isinstance(obj, _PendingArray):
            self.build_array(obj, state, at)
        elif isinstance(obj, _Quantized):
            if obj.state is not None or not isinstance(state, dict):
                raise self.fail("QuantizedWeight8bit state must be set once, from a dict", at)
            obj.state = state
        else:
            raise self.fail(f"BUILD of {self.describe(obj)} is not allowed", at)
        self.push(obj)

    def build_dtype(self, d: _DType, state: Any, at: int) -> None:
        if d.built or not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3):
            raise self.fail("unexpected numpy.dtype state", at)
        order = state[1]
        if order == ">" or (order not in ("<", "|", "=")):
            raise self.fail(f"unsupported byte order {order!r} (big-endian arrays are refused)",
                            at)
        if state[2] is not None or state[3] is not None or state[4] is not None:
            raise self.fail("structured or subarray dtypes are not allowed", at)
        d.built = True

    def build_array(self, p: _PendingArray, state: Any, at: int) -> None:
        if p.info is not None:
            raise self.fail("array state set twice", at)
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise self.fail("unexpected ndarray state (want (1, shape, dtype, fortran, data))", at)
        _, shape, dtype, fortran, data = state
        if not isinstance(shape, tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise self.fail(f"bad array shape {self.describe(shape)}", at)
        if len(shape) == 0:
            raise self.fail("0-dimensional array (a checkpoint parameter has at least one "
                            "dimension)", at)
        if len(shape) > _MAX_NDIM:
            raise self.fail(f"array has {len(shape)} dimensions", at)
        if not isinstance(dtype, _DType) or not dtype.built:
            raise self.fail("array dtype is not a numpy.dtype", at)
        if fortran is not False:
            raise self.fail("Fortran-order array (the checkpoint's arrays are C-order)", at)
        if not isinstance(data, _Bytes):
            raise self.fail("array data is not a bytes payload", at)
        want = math.prod(shape) * dtype.dtype.itemsize
        if data.length != want:
            raise self.fail(
                f"payload is {data.length} bytes but shape {list(shape)} x "
                f"{dtype.dtype.name} needs {want}", data.offset
            )
        p.info = ArrayRef(self.path, data.offset, dtype.dtype, shape)

    @staticmethod
    def describe(v: Any) -> str:
        if isinstance(v, _Global):
            return f"{v.module}.{v.name}"
        if isinstance(v, _Bytes):
            return f"<{v.length} bytes>"
        if isinstance(v, (_PendingArray, _Quantized, _DType)):
            return type(v).__name__.lstrip("_")
        r = repr(v)
        return r if len(r) < 60 else r[:57] + "..."

    # -- the opcode loop -----------------------------------------------------------
    def run(self) -> Any:
        if self.size == 0:
            raise self.fail("empty file (0 bytes)", 0)
        first = bytes(self.buf[0:2])
        if first[:1] != b"\x80":
            raise self.fail(f"not a pickle (starts with {first!r})", 0)
        ops = 0
        while True:
            at = self.pos
            ops += 1
            if ops > _MAX_OPS:
                raise self.fail(f"more than {_MAX_OPS} opcodes (a checkpoint file has fewer "
                                "than 100)", at)
            if at >= self.size:
                raise self.fail("truncated: file ends before the pickle's STOP opcode")
            op = self.take(1, "opcode")
            c = op[0]
            if c == 0x80:  # PROTO
                proto = self.u("<B", "protocol")
                if at != 0 or proto not in (2, 3, 4):
                    raise self.fail(f"unsupported pickle protocol {proto}", at)
            elif c == 0x95:  # FRAME: framing is transparent; only check the length
                n = self.u("<Q", "frame length")
                if self.pos + n > self.size:
                    raise self.fail(f"truncated: frame of {n} bytes runs past the end", at)
            elif c == 0x8C:  # SHORT_BINUNICODE
                self.push(self.text(self.u("<B", "string length"), at))
            elif c == 0x58:  # BINUNICODE
                self.push(self.text(self.u("<I", "string length"), at))
            elif c == 0x94:  # MEMOIZE
                self.memo_put(len(self.memo), at)
            elif c == 0x71:  # BINPUT
                self.memo_put(self.u("<B", "memo index"), at)
            elif c == 0x72:  # LONG_BINPUT
                self.memo_put(self.u("<I", "memo index"), at)
            elif c == 0x68:  # BINGET
                self.memo_get(self.u("<B", "memo index"), at)
            elif c == 0x6A:  # LONG_BINGET
                self.memo_get(self.u("<I", "memo index"), at)
            elif c == 0x93:  # STACK_GLOBAL
                name = self.pop(at)
                module = self.pop(at)
                if not isinstance(module, str) or not isinstance(name, str):
                    raise self.fail("STACK_GLOBAL needs two strings", at)
                self.push(self.global_(module, name, at))
            elif c == 0x63:  # GLOBAL (protocol <= 3 spelling)
                module = self._line(at)
                name = self._line(at)
                self.push(self.global_(module, name, at))
            elif c == 0x4B:  # BININT1
                self.push(self.u("<B", "int"))
            elif c == 0x4D:  # BININT2
                self.push(self.u("<H", "int"))
            elif c == 0x4A:  # BININT
                self.push(self.u("<i", "int"))
            elif c == 0x8A:  # LONG1
                n = self.u("<B", "long length")
                if n > 8:
                    raise self.fail(f"integer of {n} bytes is larger than any dimension", at)
                self.push(int.from_bytes(self.take(n, "long"), "little", signed=True))
            elif c == 0x29:  # EMPTY_TUPLE
                self.push(())
            elif c in (0x85, 0x86, 0x87):  # TUPLE1..3
                n = c - 0x84
                if len(self.stack) < n:
                    raise self.fail("pickle stack underflow", at)
                items = tuple(self.stack[-n:])
                self.check_nesting(items, at)
                del self.stack[-n:]
                self.push(items)
            elif c == 0x28:  # MARK
                if len(self.marks) >= _MAX_STACK:
                    raise self.fail("too many nested MARKs", at)
                self.marks.append(self.stack)
                self.stack = []
            elif c == 0x74:  # TUPLE
                items = tuple(self.pop_mark(at))
                self.check_nesting(items, at)
                self.push(items)
            elif c == 0x4E:  # NONE
                self.push(None)
            elif c == 0x88:  # NEWTRUE
                self.push(True)
            elif c == 0x89:  # NEWFALSE
                self.push(False)
            elif c == 0x7D:  # EMPTY_DICT
                self.push({})
            elif c == 0x73:  # SETITEM
                v = self.pop(at)
                k = self.pop(at)
                self._setitems([k, v], at)
            elif c == 0x75:  # SETITEMS
                self._setitems(self.pop_mark(at), at)
            elif c == 0x43:  # SHORT_BINBYTES
                self.push(self.payload(self.u("<B", "bytes length"), at))
            elif c == 0x42:  # BINBYTES
                self.push(self.payload(self.u("<I", "bytes length"), at))
            elif c == 0x8E:  # BINBYTES8
                self.push(self.payload(self.u("<Q", "bytes length"), at))
            elif c == 0x52:  # REDUCE
                self.reduce(at)
            elif c == 0x62:  # BUILD
                self.build(at)
            elif c == 0x81:  # NEWOBJ
                args = self.pop(at)
                cls = self.pop(at)
                if cls != _Global(*_QUANTIZED) or args != ():
                    raise self.fail(f"NEWOBJ of {self.describe(cls)} is not allowed", at)
                self.push(_Quantized(at))
            elif c == 0x2E:  # STOP
                return self.stop(at)
            else:
                raise self.fail(f"opcode {op!r} is not allowed in a checkpoint file", at)

    def _line(self, at: int) -> str:
        end = bytes(self.buf[self.pos:self.pos + _MAX_STR]).find(b"\n")
        if end < 0:
            raise self.fail("unterminated GLOBAL name", at)
        return self.text(end + 1, at)[:-1]

    def _setitems(self, items: list[Any], at: int) -> None:
        if len(items) % 2:
            raise self.fail("SETITEMS with an odd number of items", at)
        if not self.stack or not isinstance(self.stack[-1], dict):
            raise self.fail("SETITEM(S) without a dict", at)
        d = self.stack[-1]
        for k, v in zip(items[::2], items[1::2], strict=True):
            if not isinstance(k, str):
                raise self.fail("dict key is not a string", at)
            self.check_nesting([v], at)
            d[k] = v
            if len(d) > _MAX_DICT:
                raise self.fail(f"dict of more than {_MAX_DICT} keys (a checkpoint file's "
                                "has 2)", at)

    def stop(self, at: int) -> tuple[str, dict[str, ArrayRef]]:
        if len(self.stack) != 1 or self.marks:
            raise self.fail("pickle does not end with exactly one object", at)
        if self.pos != self.size:
            raise self.fail(f"{self.size - self.pos} unexpected bytes after the pickle's STOP",
                            self.pos)
        obj = self.stack[0]
        if isinstance(obj, _PendingArray) and obj.info is not None:
            return "ndarray", {"array": obj.info}
        if isinstance(obj, _Quantized) and obj.state is not None:
            st = obj.state
            if set(st) != {"weight", "scales"}:
                raise self.fail(f"QuantizedWeight8bit fields {escape(str(sorted(st)))} are "
                                f"not ['scales', 'weight']", at)
            arrays = {}
            for name in ("weight", "scales"):
                v = st[name]
                if not isinstance(v, _PendingArray) or v.info is None:
                    raise self.fail(f"QuantizedWeight8bit.{name} is not an array", at)
                arrays[name] = v.info
            return "quantized", arrays
        raise self.fail(f"the pickled object is a {self.describe(obj)}, not an array or "
                        f"QuantizedWeight8bit", at)


def zero_tail_offset(path: str | os.PathLike[str], block: int = 1 << 20) -> int | None:
    """Offset from which the file is all zero bytes to its end, or None.

    An incomplete, preallocated torrent download looks like this.  Reads the
    file backwards only as far as the zeros go.
    """
    size = os.path.getsize(path)
    if size == 0:
        return None
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            stripped = chunk.rstrip(b"\x00")
            if stripped:
                first_zero = start + len(stripped)
                return first_zero if first_zero < size else None
            end = start
        return 0


class _PreadBuffer:
    """``buf[a:b]`` over a file by pread, a window at a time, never mapped.

    A file truncated while it is scanned then reads short (the walker reports
    it truncated) instead of killing the process with SIGBUS, as a mapping would.
    """

    WINDOW = 64 * 1024  # the framing of a real file is a few hundred bytes

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.start = 0
        self.data = b""

    def __getitem__(self, s: slice) -> bytes:
        lo, hi = s.start or 0, s.stop
        if not (self.start <= lo and hi <= self.start + len(self.data)):
            self.start = lo
            self.data = os.pread(self.fd, max(hi - lo, self.WINDOW), lo)
        return self.data[lo - self.start:hi - self.start]


def scan(path: str | os.PathLike[str]) -> ParamFile:
    """Find the parameter kind and every array's dtype, shape, offset and length.

    Reads only the pickle framing (a few hundred bytes), never a payload.
    Raises CheckpointFormatError for anything but a well-formed checkpoint file.
    """
    p = Path(path)
    try:
        # O_NONBLOCK: a FIFO named like a tensor file must be refused, not wait forever
        # for a writer; the type is checked on the open file, so it cannot be swapped.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointFormatError(p, None, f"is {file_kind(st.st_mode)}, not a "
                                            "checkpoint file (a regular file)")
            size = st.st_size
            if size == 0:
                raise CheckpointFormatError(p, 0, "empty file (0 bytes)")
            walker = _Walker(p, _PreadBuffer(fd), size)
            kind, arrays = walker.run()
            spelling = walker.spelling
        finally:
            os.close(fd)
    except CheckpointFormatError as e:
        zero_from = _safe_zero_tail(p)
        if zero_from is not None:
            where = ("entirely zero bytes" if zero_from == 0
                     else f"zero bytes from byte {zero_from} on")
            raise CheckpointFormatError(
                p, e.offset, f"{e.what}; the file is {where} "
                f"(an incomplete, preallocated download? re-fetch it: grokfetch get --repair)"
            ) from None
        raise
    except IsADirectoryError:
        raise CheckpointFormatError(p, None, "is a directory, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointFormatError(p, None, f"cannot read: {e.strerror or e}") from None
    return ParamFile(p, size, kind, arrays, spelling)


def file_kind(mode: int) -> str:
    """'a folder', 'a FIFO (named pipe)', 'a character device', ... for a stat mode."""
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return "not a regular file"


def _safe_zero_tail(p: Path) -> int | None:
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):  # never open a FIFO (it would block)
            return None
        return zero_tail_offset(p)
    except OSError:
        return None
