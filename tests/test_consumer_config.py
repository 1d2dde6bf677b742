"""What a repack hands the stacks that load it: every config key they read, and the tokenizer.

The keys each consumer's Grok loader reads are listed in tests/consumers/required_keys.json,
beside the tier that runs those consumers (python -m pytest -m consumers tests/consumers).
"""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from click.testing import CliRunner
from helpers import GOLDEN

from grokfetch.cli import cli
from grokfetch.errors import UsageError
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest
from grokfetch.format.tokenizer import PACKAGED_TOKENIZER, load_tokenizer, parse_sentencepiece
from grokfetch.integrity.verify import verify
from grokfetch.repack.run import repack

REQUIRED = json.loads((GOLDEN.parent.parent / "consumers" / "required_keys.json").read_text())
CONSUMERS = [k for k in REQUIRED if not k.startswith("_")]
GROK1_TOKENIZER_SHA256 = "5c69d7cbad192fa2c9d14e2a77fbfdc11597c68907b043ddb0260e3d28eddd7f"


@pytest.fixture(scope="module")
def sglang_repack(mini_ckpt, tmp_path_factory):
    dest = tmp_path_factory.mktemp("consumer-config") / "out"
    repack(mini_ckpt, dest, layout="sglang", dtype="f32", jobs=1)
    return dest


@pytest.mark.parametrize("consumer", CONSUMERS)
def test_config_json_carries_every_key_the_consumer_reads(sglang_repack, consumer):
    config = json.loads((sglang_repack / "config.json").read_text())
    need = REQUIRED[consumer]
    missing = [k for k in need["keys"] if k not in config]
    assert not missing, f"{consumer} reads {missing}, which config.json lacks"
    for key, value in need["values"].items():
        assert config[key] == value, (consumer, key)


def test_config_json_values_are_the_models(sglang_repack):
    config = json.loads((sglang_repack / "config.json").read_text())
    model = load_manifest(sglang_repack / MANIFEST_NAME).config
    assert config["attn_output_multiplier"] == model.attn_output_multiplier
    assert config["moe_intermediate_size"] == model.ffn_size == config["intermediate_size"]
    assert config["head_dim"] == model.key_size
    assert config["moe_router_renormalize"] is False


@pytest.mark.parametrize("layout", ["sglang", "per-tensor"])
def test_the_official_tokenizer_lands_in_dest_with_its_hash(mini_ckpt, tmp_path, layout):
    dest = tmp_path / "out"
    res = repack(mini_ckpt, dest, layout=layout, dtype="bf16", jobs=1)
    data = (dest / "tokenizer.model").read_bytes()
    assert len(data) == 2_229_219 and hashlib.sha256(data).hexdigest() == GROK1_TOKENIZER_SHA256
    assert res.tokenizer["official"] and res.tokenizer["sha256"] == GROK1_TOKENIZER_SHA256
    m = load_manifest(dest / MANIFEST_NAME)
    assert m.tokenizer is not None and m.tokenizer.sha256 == GROK1_TOKENIZER_SHA256
    assert {"tokenizer.model", "tokenizer_config.json"} <= {f.path for f in m.files}
    tc = json.loads((dest / "tokenizer_config.json").read_text())
    assert (tc["bos_token"], tc["eos_token"], tc["pad_token"]) == ("[BOS]", "[EOS]", "[PAD]")
    assert tc["add_bos_token"] is False  # the official runner encodes without a BOS
    assert verify(dest).ok  # the manifest covers the tokenizer's bytes too


def test_the_packaged_manifest_knows_the_tokenizer_hash():
    entry = load_manifest("grok-1").tokenizer
    assert entry is not None and entry.path == "tokenizer.model"
    assert entry.size == PACKAGED_TOKENIZER.stat().st_size == 2_229_219
    assert entry.sha256 == hashlib.sha256(PACKAGED_TOKENIZER.read_bytes()).hexdigest()
    tok = load_tokenizer()
    assert tok.official and tok.pieces == 131_072
    assert tok.special_ids == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _piece(text: str, score: float, kind: int) -> bytes:
    raw = text.encode()
    body = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", score) + b"\x18" + \
        bytes([kind])
    return b"\x0a" + _varint(len(body)) + body


def test_another_sentencepiece_model_is_accepted_and_said_not_to_be_the_official(
        mini_ckpt, tmp_path):
    model = _piece("<unk>", 0, 2) + _piece("<s>", 0, 3) + _piece("</s>", 0, 3) + \
        _piece("\u2581hi", -1.0, 1)
    (tmp_path / "t.model").write_bytes(model)
    assert parse_sentencepiece(model)[0] == 4
    res = repack(mini_ckpt, tmp_path / "out", layout="sglang", jobs=1,
                 tokenizer=tmp_path / "t.model")
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == model
    assert res.tokenizer["official"] is False
    tc = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert (tc["unk_token"], tc["bos_token"], tc["eos_token"]) == ("<unk>", "<s>", "</s>")


def test_short_and_long_pieces_are_read_alike():
    """Pieces under 128 bytes take the parser's one-byte fast path, longer ones the
    general walk: both count, and special ids point at the right piece either way."""
    long_piece = "\u2581" + "x" * 200
    model = _piece(long_piece, -2.0, 1) + _piece("<unk>", 0, 2) + _piece("<s>", 0, 3) + \
        _piece("</s>", 0, 3) + _piece(long_piece + "y", -3.0, 1)
    count, ids, tokens = parse_sentencepiece(model)
    assert count == 5
    assert (tokens["unk"], tokens["bos"], tokens["eos"]) == (long_piece, "<unk>", "<s>")
    assert ids == {"unk": 0, "bos": 1, "eos": 2}


@pytest.mark.parametrize("content", [b"", b"\x80\x04K\x01.", b"hello world\n",
                                     b"\x0a\xff\xff\xff\x0f", b"\x0a", b"\x0a\x05ab",
                                     _piece("<unk>", 0, 2) + b"\x0a\x7f" + b"x" * 10])
def test_a_file_that_is_not_a_sentencepiece_model_is_refused_before_writing(
        mini_ckpt, tmp_path, content):
    (tmp_path / "bad.model").write_bytes(content)
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(tmp_path / "out"),
                                 "--layout", "sglang", "--tokenizer", str(tmp_path / "bad.model")])
    assert r.exit_code == 2, r.output
    assert "bad.model" in r.output and "SentencePiece" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_sglang_layout_refuses_an_inferred_config(tmp_path):
    # The golden files do not record the head size (16); inferring guesses another.
    r = CliRunner().invoke(cli, ["repack", str(GOLDEN), str(tmp_path / "out"),
                                 "--layout", "sglang"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "--config" in lines[0] and "inferred" in lines[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="guessed head size"):
        repack(GOLDEN, tmp_path / "out", layout="sglang")


def test_sglang_layout_takes_a_confirmed_config_and_per_tensor_keeps_its_note(tmp_path):
    r = CliRunner().invoke(cli, ["repack", str(GOLDEN), str(tmp_path / "sg"), "--layout",
                                 "sglang", "--config", str(GOLDEN / "layout.json"), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "sg" / "config.json").read_text())["head_dim"] == 16
    r = CliRunner().invoke(cli, ["repack", str(GOLDEN), str(tmp_path / "pt"), "-q"])
    assert r.exit_code == 0, r.output
    assert "note: the model config was inferred" in r.output
