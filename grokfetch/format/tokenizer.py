"""Grok-1's tokenizer: the packaged SentencePiece model, checked, and what a repack carries.

The torrent holds only weights; the tokenizer (``tokenizer.model``, a
SentencePiece model) ships with the official code repository.  Every stack
that loads a repack needs it beside the shards: llama.cpp's
``convert_hf_to_gguf.py`` refuses a Grok folder without it, and SGLang reads
it through transformers' ``AutoTokenizer``.  grokfetch carries a copy
(Apache-2.0, ``grokfetch/data/``) whose size and SHA-256 the packaged
manifest records, and copies it into every repack together with the small
config files those loaders read to pick it up.

A file given with ``--tokenizer`` is accepted when it is the official one
(size and SHA-256) or, failing that, when it parses as a SentencePiece model:
a protobuf ``ModelProto`` walked here as data (field numbers and lengths,
bounds-checked), never loaded by a library that could run anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokfetch.errors import GrokfetchError, UsageError
from grokfetch.format.manifest import FileEntry, load_manifest

TOKENIZER_NAME = "tokenizer.model"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
PACKAGED_TOKENIZER = Path(__file__).resolve().parent.parent / "data" / TOKENIZER_NAME
_MAX_SIZE = 64 * 2**20  # SentencePiece models are a few MB; refuse to read a huge file

# SentencePiece's ModelProto (sentencepiece_model.proto): the field numbers we read.
_PIECES, _TRAINER_SPEC = 1, 2
_PIECE_TEXT, _PIECE_TYPE = 1, 3
_PIECE_KEY = _PIECES << 3 | 2  # a piece's key byte: field 1, length-delimited
_KNOWN_MODEL_FIELDS = {1, 2, 3, 4, 5}  # pieces, trainer, normalizer, self-test, denormalizer
_SPECIAL_ID_FIELDS = {"unk": (40, 0), "bos": (41, 1), "eos": (42, 2), "pad": (43, -1)}
_CONTROL, _UNKNOWN = 3, 2


@dataclass(frozen=True)
class Tokenizer:
    """A checked SentencePiece model: where it is, its bytes' identity, what it holds."""

    path: Path
    size: int
    sha256: str
    official: bool  # the packaged manifest's size and SHA-256
    pieces: int
    special_ids: dict[str, int]  # 'unk', 'bos', 'eos', 'pad' -> id, where it has one
    special_tokens: dict[str, str]  # the same kinds -> the piece
    data: bytes = field(repr=False, compare=False)


def official_entry() -> FileEntry | None:
    """The tokenizer the packaged Grok-1 manifest records (path, size, sha256)."""
    try:
        return load_manifest("grok-1").tokenizer
    except GrokfetchError:
        return None


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Tokenizer:
    """Read and check a tokenizer: the packaged one by default.

    Raises UsageError (exit 2) naming the file for one that is unreadable, too
    large or not a SentencePiece model.
    """
    p = Path(path) if path is not None else PACKAGED_TOKENIZER
    try:
        size = p.stat().st_size
        if size > _MAX_SIZE:
            raise UsageError(f"{p}: {size:,} bytes is too large for a SentencePiece model")
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{p}: cannot read the tokenizer ({e.strerror or e})") from None
    digest = hashlib.sha256(data).hexdigest()
    entry = official_entry()
    official = entry is not None and entry.size == len(data) and entry.sha256 == digest
    if path is None and not official:
        raise UsageError(f"{p}: the packaged tokenizer does not match the packaged manifest's "
                         "size and SHA-256 (a damaged install: reinstall grokfetch)")
    pieces, ids, tokens = parse_sentencepiece(data, p)
    return Tokenizer(p, len(data), digest, official, pieces, ids, tokens, data)


def parse_sentencepiece(data: bytes, where: object = "tokenizer"
                        ) -> tuple[int, dict[str, int], dict[str, str]]:
    """Piece count, special ids and special pieces (kind -> text) of a SentencePiece
    ``ModelProto``.

    Walks the protobuf wire format with bounds checks; anything else (a pickle,
    text, a truncated file) is refused with the byte offset where it stops
    being a SentencePiece model.  Only the special pieces are decoded.
    """
    spans: list[tuple[int, int]] = []
    special = {k: default for k, (_f, default) in _SPECIAL_ID_FIELDS.items()}
    i, end = 0, len(data)
    while i < end:
        # A piece shorter than 128 bytes (nearly all of them) has a one-byte key and a
        # one-byte length: taken here without the general walk, which spent 0.2 s on
        # Grok-1's 131,072 pieces before a repack's first byte.
        if data[i] == _PIECE_KEY and i + 1 < end and data[i + 1] < 0x80:
            piece_end = i + 2 + data[i + 1]
            if piece_end > end:
                raise _not_sp(where, i, f"field {_PIECES} runs past the end")
            spans.append((i + 2, piece_end))
            i = piece_end
            continue
        num, wire, value, offset, i = _field(data, i, end, where)
        if num not in _KNOWN_MODEL_FIELDS:
            raise _not_sp(where, offset, f"unknown field {num}")
        if num == _PIECES:
            if wire != 2:
                raise _not_sp(where, offset, "a piece is not a message")
            spans.append(value)
        elif num == _TRAINER_SPEC and wire == 2:
            for f, w, v, _o in _fields(data, value[0], value[1], where):
                for kind, (f_id, _default) in _SPECIAL_ID_FIELDS.items():
                    if f == f_id and w == 0:
                        special[kind] = v - (1 << 64) if v >= 1 << 63 else v  # int32 -1
    if not spans:
        raise _not_sp(where, 0, "holds no pieces")
    tokens = {kind: _piece_text(data, spans[i], where)
              for kind, i in special.items() if 0 <= i < len(spans)}
    ids = {kind: i for kind, i in special.items() if 0 <= i < len(spans)}
    return len(spans), ids, tokens


def _piece_text(data: bytes, span: tuple[int, int], where: object) -> str:
    text = None
    for f, w, v, o in _fields(data, span[0], span[1], where):
        if f == _PIECE_TEXT and w == 2:
            try:
                text = data[v[0]:v[1]].decode("utf-8")
            except UnicodeDecodeError:
                raise _not_sp(where, o, "a piece is not UTF-8") from None
    if text is None:
        raise _not_sp(where, span[0], "a piece has no text")
    return text


def _not_sp(where: object, offset: int, what: str) -> UsageError:
    return UsageError(f"{where} at byte {offset}: not a SentencePiece model ({what})")


def _varint(data: bytes, i: int, end: int, where: object) -> tuple[int, int]:
    value = shift = 0
    start = i
    while True:
        if i >= end or shift > 63:
            raise _not_sp(where, start, "truncated or overlong varint")
        c = data[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, i


def _fields(data: bytes, i: int, end: int, where: object) -> Iterator[tuple[int, int, Any, int]]:
    """(field, wire type, value, offset) for each field in data[i:end]: a varint's value
    is an int, a length-delimited one its (start, end) span in data, a fixed one bytes."""
    while i < end:
        num, wire, value, offset, i = _field(data, i, end, where)
        yield num, wire, value, offset


def _field(data: bytes, i: int, end: int, where: object) -> tuple[int, int, Any, int, int]:
    """The field at data[i] (i < end): (field, wire type, value, offset, where the next
    one starts)."""
    offset = i
    key, i = _varint(data, i, end, where)
    num, wire = key >> 3, key & 7
    if num == 0:
        raise _not_sp(where, offset, "field number 0")
    value: Any
    if wire == 0:
        value, i = _varint(data, i, end, where)
    elif wire == 2:
        n, i = _varint(data, i, end, where)
        if n > end - i:
            raise _not_sp(where, offset, f"field {num} runs past the end")
        value, i = (i, i + n), i + n
    elif wire in (1, 5):
        n = 8 if wire == 1 else 4
        if n > end - i:
            raise _not_sp(where, offset, f"field {num} runs past the end")
        value, i = data[i:i + n], i + n
    else:
        raise _not_sp(where, offset, f"wire type {wire}")
    return num, wire, value, offset, i


# -- what a repack carries ---------------------------------------------------------------


def tokenizer_files(tok: Tokenizer, max_length: int) -> dict[str, bytes]:
    """The files a repack gets so the stacks find the tokenizer (name -> bytes).

    ``tokenizer.model`` itself (llama.cpp's converter reads it with
    sentencepiece), and ``tokenizer_config.json`` for transformers'
    ``AutoTokenizer`` (what SGLang uses) and llama.cpp's special-token handling:
    transformers' SentencePiece backend (its default, a converted fast
    tokenizer, splits runs of spaces and some punctuation differently from the
    model), the special pieces by name, and no BOS or EOS added, as the
    official runner encodes.
    """
    config: dict[str, Any] = {
        "tokenizer_class": "SentencePieceBackend",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }
    for kind in ("bos", "eos", "unk", "pad"):
        if kind in tok.special_tokens:
            config[f"{kind}_token"] = tok.special_tokens[kind]
    return {
        TOKENIZER_NAME: tok.data,
        TOKENIZER_CONFIG_NAME: (json.dumps(config, indent=1) + "\n").encode(),
    }
