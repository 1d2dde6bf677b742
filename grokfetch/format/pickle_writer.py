"""Write parameter files byte for byte as the official checkpoint was written.

The real checkpoint is ``pickle.dump(obj, f)`` (protocol 4, C pickler,
numpy 1.x).  We cannot simply call ``pickle.dump`` here: numpy 2 spells its
globals differently (``numpy._core.multiarray``), the dataclass must appear as
``__main__.QuantizedWeight8bit`` and we must be able to stream multi-GB
payloads without holding them in memory.  So this module emits the same
opcode stream itself, including pickle's framing rules:

* opcodes are collected in frames; a frame is committed (``FRAME`` + 8-byte
  length, or no header when it holds fewer than 4 bytes) before an object
  is saved once it has reached 64 KiB;
* a bytes payload of 64 KiB or more commits the current frame and is
  written directly, outside any frame;
* every saved object except empty tuples is memoised (``MEMOIZE``), and an
  object saved again is fetched with ``BINGET`` instead.

The result is checked against the golden checkpoint written by the official
code (tests/test_pickle_writer.py): identical bytes, file for file.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

import numpy as np

FRAME_SIZE_TARGET = 64 * 1024
FRAME_SIZE_MIN = 4

# A payload is produced by a callback that writes exactly ``nbytes`` to a file.
PayloadWriter = Callable[[BinaryIO], None]


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Payload:
    nbytes: int
    write: PayloadWriter


@dataclass(frozen=True)
class _Reduce:
    func: _Global
    args: tuple[Any, ...]
    state: Any
    memo_key: Any = None  # objects sharing a key are the same Python object (memo hit)


@dataclass(frozen=True)
class _NewObj:
    cls: _Global
    state: dict[str, Any]


@dataclass
class _Sink:
    """Where the pickle goes: a real file, or nothing (to count bytes)."""

    file: BinaryIO | None
    size: int = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.file is not None:
            self.file.write(data)

    def write_payload(self, payload: _Payload) -> None:
        self.size += payload.nbytes
        if self.file is not None:
            before = self.file.tell()
            payload.write(self.file)
            written = self.file.tell() - before
            if written != payload.nbytes:
                raise RuntimeError(f"payload writer wrote {written} bytes, not {payload.nbytes}")


@dataclass
class _Emitter:
    sink: _Sink
    frame: bytearray = field(default_factory=bytearray)
    memo: dict[Any, int] = field(default_factory=dict)

    # -- framing -----------------------------------------------------------------
    def commit_frame(self, force: bool = False) -> None:
        if self.frame and (force or len(self.frame) >= FRAME_SIZE_TARGET):
            if len(self.frame) >= FRAME_SIZE_MIN:
                self.sink.write(b"\x95" + struct.pack("<Q", len(self.frame)))
            self.sink.write(bytes(self.frame))
            self.frame = bytearray()

    def write(self, data: bytes) -> None:
        self.frame += data

    # -- memo --------------------------------------------------------------------
    def memoize(self, key: Any) -> None:
        self.write(b"\x94")  # MEMOIZE
        self.memo[key] = len(self.memo)

    def get(self, key: Any) -> bool:
        idx = self.memo.get(key)
        if idx is None:
            return False
        if idx < 256:
            self.write(b"h" + struct.pack("<B", idx))  # BINGET
        else:
            self.write(b"j" + struct.pack("<I", idx))  # LONG_BINGET
        return True

    # -- objects -----------------------------------------------------------------
    def save(self, obj: Any) -> None:
        self.commit_frame()
        if obj is None:
            self.write(b"N")
        elif obj is True:
            self.write(b"\x88")
        elif obj is False:
            self.write(b"\x89")
        elif isinstance(obj, int):
            self.save_int(obj)
        elif isinstance(obj, str):
            self.save_str(obj)
        elif isinstance(obj, bytes):
            self.save_small_bytes(obj)
        elif isinstance(obj, tuple):
            self.save_tuple(obj)
        elif isinstance(obj, _Global):
            self.save_global(obj)
        elif isinstance(obj, _Payload):
            self.save_payload(obj)
        elif isinstance(obj, _Reduce):
            self.save_reduce(obj)
        elif isinstance(obj, _NewObj):
            self.save_newobj(obj)
        else:  # pragma: no cover - programming error
            raise TypeError(f"cannot emit {type(obj).__name__}")

    def save_int(self, v: int) -> None:
        if 0 <= v <= 0xFF:
            self.write(b"K" + struct.pack("<B", v))
        elif 0 <= v <= 0xFFFF:
            self.write(b"M" + struct.pack("<H", v))
        elif -0x80000000 <= v <= 0x7FFFFFFF:
            self.write(b"J" + struct.pack("<i", v))
        else:
            n = (v.bit_length() + 8) // 8  # two's complement, as pickle.encode_long
            enc = v.to_bytes(n, "little", signed=True)
            if v < 0 and n > 1 and enc[-1] == 0xFF and (enc[-2] & 0x80):
                enc = enc[:-1]
            self.write(b"\x8a" + struct.pack("<B", len(enc)) + enc)

    def save_str(self, s: str) -> None:
        # Equal short strings are the same (interned) object in the writer.
        if self.get(("str", s)):
            return
        enc = s.encode("utf-8")
        if len(enc) < 256:
            self.write(b"\x8c" + struct.pack("<B", len(enc)) + enc)
        else:
            self.write(b"X" + struct.pack("<I", len(enc)) + enc)
        self.memoize(("str", s))

    def save_small_bytes(self, b: bytes) -> None:
        # CPython caches one-byte bytes objects, so b'b' is the same object each time.
        key: Any = ("bytes", b) if len(b) == 1 else object()
        if self.get(key):
            return
        self.write(b"C" + struct.pack("<B", len(b)) + b)
        self.memoize(key)

    def save_payload(self, p: _Payload) -> None:
        n = p.nbytes
        if n <= 0xFF:
            header = b"C" + struct.pack("<B", n)
        elif n > 0xFFFFFFFF:
            header = b"\x8e" + struct.pack("<Q", n)  # BINBYTES8
        else:
            header = b"B" + struct.pack("<I", n)
        if n >= FRAME_SIZE_TARGET:
            # Large payloads bypass framing: commit the frame, write directly.
            self.commit_frame(force=True)
            self.sink.write(header)
            self.sink.write_payload(p)
        elif self.sink.file is None:  # only counting bytes
            self.write(header + bytes(n))
        else:
            buf = io.BytesIO()
            p.write(buf)
            self.write(header + buf.getvalue())
        self.memoize(object())

    def save_tuple(self, t: tuple[Any, ...]) -> None:
        if not t:
            self.write(b")")  # EMPTY_TUPLE, never memoised
            return
        if len(t) <= 3:
            for item in t:
                self.save(item)
            self.write({1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(t)])
        else:
            self.write(b"(")  # MARK
            for item in t:
                self.save(item)
            self.write(b"t")  # TUPLE
        self.memoize(object())

    def save_global(self, g: _Global) -> None:
        if self.get(("global", g)):
            return
        self.save(g.module)
        self.save(g.name)
        self.write(b"\x93")  # STACK_GLOBAL
        self.memoize(("global", g))

    def save_reduce(self, r: _Reduce) -> None:
        if r.memo_key is not None and self.get(r.memo_key):
            return
        self.save(r.func)
        self.save(r.args)
        self.write(b"R")  # REDUCE
        self.memoize(r.memo_key if r.memo_key is not None else object())
        self.save(r.state)
        self.write(b"b")  # BUILD

    def save_newobj(self, o: _NewObj) -> None:
        self.save(o.cls)
        self.save(())
        self.write(b"\x81")  # NEWOBJ
        self.memoize(object())
        self.commit_frame()
        self.write(b"}")  # EMPTY_DICT
        self.memoize(object())
        items = list(o.state.items())
        if len(items) == 1:
            self.save(items[0][0])
            self.save(items[0][1])
            self.write(b"s")  # SETITEM
        elif items:
            self.write(b"(")  # MARK
            for k, v in items:
                self.save(k)
                self.save(v)
            self.write(b"u")  # SETITEMS
        self.write(b"b")  # BUILD


# -- numpy objects as numpy 1.x pickles them ------------------------------------


def _dtype_node(dtype: np.dtype, numpy_spelling: int) -> _Reduce:
    dtype_cls = _Global("numpy", "dtype")
    if dtype.name == "bfloat16":
        # ml_dtypes' dtype is pickled by its scalar type; its descr state carries
        # itemsize 2, alignment 2 and the NPY_USE_GETITEM-style flag 64.
        args: tuple[Any, ...] = (_Global("ml_dtypes", "bfloat16"), False, True)
        state: tuple[Any, ...] = (3, "<", None, None, None, 2, 2, 64)
    else:
        if dtype.kind not in "biuf" or dtype.byteorder == ">":
            raise ValueError(f"unsupported dtype {dtype}")
        typestr = f"{dtype.kind}{dtype.itemsize}"
        order = "|" if dtype.itemsize == 1 else "<"
        args = (typestr, False, True)
        state = (3, order, None, None, None, -1, -1, 0)
    return _Reduce(dtype_cls, args, state, memo_key=("dtype", dtype.str, dtype.name))


def _array_node(shape: tuple[int, ...], dtype: np.dtype, payload: _Payload,
                numpy_spelling: int) -> _Reduce:
    module = "numpy.core.multiarray" if numpy_spelling == 1 else "numpy._core.multiarray"
    reconstruct = _Global(module, "_reconstruct")
    args = (_Global("numpy", "ndarray"), (0,), b"b")
    state = (1, tuple(int(s) for s in shape), _dtype_node(dtype, numpy_spelling), False, payload)
    return _Reduce(reconstruct, args, state)


@dataclass(frozen=True)
class ArrayData:
    """An array to write: its dtype and shape, and where its bytes come from.

    ``source`` is an ndarray (written in C order), or a callback that writes
    exactly ``nbytes`` bytes to a file - for streaming multi-GB payloads.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    source: np.ndarray | PayloadWriter | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @classmethod
    def of(cls, a: np.ndarray) -> ArrayData:
        return cls(a.dtype, tuple(a.shape), a)

    def payload(self) -> _Payload:
        src = self.source
        if src is None:
            def write_nothing(f: BinaryIO) -> None:  # sizing only; never called
                raise RuntimeError("no payload source")
            return _Payload(self.nbytes, write_nothing)
        if isinstance(src, np.ndarray):
            arr = np.ascontiguousarray(src)

            def write_array(f: BinaryIO) -> None:
                f.write(arr.reshape(-1).view(np.uint8).data)

            return _Payload(self.nbytes, write_array)
        return _Payload(self.nbytes, src)


def _root(kind: str, arrays: dict[str, ArrayData], numpy_spelling: int) -> Any:
    if kind == "ndarray":
        (a,) = arrays.values()
        return _array_node(a.shape, a.dtype, a.payload(), numpy_spelling)
    if kind == "quantized":
        state = {
            name: _array_node(arrays[name].shape, arrays[name].dtype, arrays[name].payload(),
                              numpy_spelling)
            for name in ("weight", "scales")
        }
        return _NewObj(_Global("__main__", "QuantizedWeight8bit"), state)
    raise ValueError(f"unknown parameter kind {kind!r}")


def _emit(sink: _Sink, root: Any) -> None:
    sink.write(b"\x80\x04")  # PROTO 4 precedes the first frame
    e = _Emitter(sink)
    e.save(root)
    e.write(b".")  # STOP
    e.commit_frame(force=True)


def pickled_size(kind: str, arrays: dict[str, ArrayData], numpy_spelling: int = 1) -> int:
    """The exact size of the file ``write_param_file`` would write (nothing is written)."""
    sink = _Sink(None)
    _emit(sink, _root(kind, arrays, numpy_spelling))
    return sink.size


def write_param_file(target: str | os.PathLike[str] | IO[bytes], kind: str,
                     arrays: dict[str, ArrayData], numpy_spelling: int = 1) -> int:
    """Write one parameter file exactly as numpy 1.x + pickle protocol 4 did.

    ``kind`` is 'ndarray' (``arrays`` has one entry) or 'quantized'
    (``weight`` int8 and ``scales`` bfloat16).  ``target`` is a path (written
    directly) or an open binary file, e.g. from ``fsutil.atomic_write``.
    Returns the number of bytes written.
    """
    if hasattr(target, "write"):
        sink = _Sink(target)  # type: ignore[arg-type]
        _emit(sink, _root(kind, arrays, numpy_spelling))
        return sink.size
    with open(target, "wb") as f:
        sink = _Sink(f)
        _emit(sink, _root(kind, arrays, numpy_spelling))
    return sink.size
