"""The lazy weights loader: block reads, exact dequantization, file order, every layout."""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import zstandard
from helpers import GOLDEN
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file

from grokfetch.errors import CheckpointFormatError
from grokfetch.format import pickle_reader
from grokfetch.format.files import FileBytes, ZstdBytes
from grokfetch.format.layout import ModelConfig
from grokfetch.model import weights
from grokfetch.model.weights import (
    RowMatrix,
    dequantize,
    open_weights,
    read_array,
    read_rows,
    row_blocks,
    safetensors_arrays,
)

GOLDEN_CONFIG = ModelConfig.from_dict(json.loads((GOLDEN / "layout.json").read_text()))
GOLDEN_FILES = json.loads((GOLDEN / "layout.json").read_text())["files"]


def golden_file(module: str) -> str:
    """The file the official code wrote ``module`` to (from the golden layout.json)."""
    return next(f["file"] for f in GOLDEN_FILES if f["module"] == module)


# --- blocks and dequantization --------------------------------------------------------------


@given(
    groups=st.sampled_from([None, 1, 8]),
    rows_per_group=st.integers(1, 50),
    n=st.integers(1, 5000),
)
def test_row_blocks_cover_every_row_once_and_never_straddle_a_scale_group(groups, rows_per_group,
                                                                         n):
    k = (groups or 1) * rows_per_group
    blocks = row_blocks(k, n, groups)
    assert [r for k0, k1 in blocks for r in range(k0, k1)] == list(range(k))
    for k0, k1 in blocks:
        assert k0 // rows_per_group == (k1 - 1) // rows_per_group  # one group per block
        assert (k1 - k0) * n <= max(weights.BLOCK_ELEMENTS, n)


def test_dequantize_scales_each_group_of_rows_by_its_own_scale_row():
    weight = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], dtype=np.int8)  # K=4, N=2
    scales = np.array([[1.0, 10.0], [100.0, 1000.0]], dtype=ml_dtypes.bfloat16)  # G=2
    np.testing.assert_array_equal(
        dequantize(weight, scales),
        [[1, 20], [3, 40], [500, 6000], [700, 8000]],
    )


def test_dequantize_is_exact_in_float32():
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, size=(2, 16, 5), dtype=np.int8)
    scales = rng.standard_normal((2, 8, 5)).astype(ml_dtypes.bfloat16)
    exact = weight.reshape(2, 8, 2, 5).astype(np.float64) * scales.astype(np.float64)[:, :, None]
    np.testing.assert_array_equal(dequantize(weight, scales), exact.reshape(2, 16, 5))


def test_row_matrix_blocks_are_the_dequantized_weight_bit_for_bit(monkeypatch):
    monkeypatch.setattr(weights, "BLOCK_ELEMENTS", 1000)  # several blocks per scale group
    path = GOLDEN / golden_file("transformer/decoder_layer_0/moe/linear_1")  # G = 8
    pf = pickle_reader.scan(path)
    w, s = pf.open("weight"), pf.open("scales")  # [8, 344, 64], [8, 8, 64]
    a = pf.arrays["weight"]
    m = RowMatrix("linear_1", FileBytes(path), a.sub(3), np.asarray(s[3], np.float32), 8)
    blocks = list(m.blocks())
    assert len(blocks) > 8
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in blocks]), dequantize(w, s)[3])


# --- the original checkpoint ----------------------------------------------------------------


def test_layers_come_from_the_files_jax_flatten_order_put_them_in():
    w = open_weights(GOLDEN, GOLDEN_CONFIG)
    for module in ("transformer/decoder_layer_10/router", "transformer/decoder_layer_2/router"):
        expected = pickle_reader.scan(GOLDEN / golden_file(module)).open("array")
        layer = int(module.split("_")[2].split("/")[0])
        np.testing.assert_array_equal(w.layer(layer).router, expected)
    for f in GOLDEN_FILES:
        assert f"({f['file']})" in w.describe(w.spec(f["module"]))


def test_embedding_rows_are_gathered_in_any_order_with_repeats():
    w = open_weights(GOLDEN, GOLDEN_CONFIG)
    table = pickle_reader.scan(GOLDEN / golden_file("language_model/in_out_embed")).open("array")
    tokens = np.array([200, 3, 200, 0, 255])
    np.testing.assert_array_equal(w.embedding_rows(tokens), table[tokens])
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in w.embedding_blocks()]), table)


def test_a_missing_parameter_file_is_named(tmp_path):
    shutil.copytree(GOLDEN / "ckpt-0", tmp_path / "ckpt-0")
    gone = golden_file("transformer/decoder_layer_3/moe/linear_v")
    os.remove(tmp_path / gone)
    w = open_weights(tmp_path, GOLDEN_CONFIG)
    w.layer(2).moe_linear_v[0]  # other layers are fine
    stack = w.layer(3).moe_linear_v  # expert weights are opened lazily, when first used
    with pytest.raises(CheckpointFormatError, match=gone.split("/")[1] + ": missing"):
        stack[0]


# --- byte sources and safetensors ------------------------------------------------------------


def test_zstd_bytes_reads_any_range_in_any_order(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, size=3_000_000, dtype=np.uint8).tobytes()
    path = tmp_path / "x.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=1).compress(data))
    src = ZstdBytes(path)
    for offset, n in [(10, 5), (2_000_000, 1000), (0, 3), (2_999_990, 10), (5, 2_000_000)]:
        assert bytes(src.read(offset, n)) == data[offset : offset + n]
    with pytest.raises(CheckpointFormatError, match="ends early"):
        src.read(2_999_999, 2)
    src.close()


def test_safetensors_header_parsed_by_hand_matches_the_reference_writer(tmp_path):
    tensors = {
        "weight": np.arange(24, dtype=np.int8).reshape(2, 3, 4),
        "scales": np.linspace(-1, 1, 8).astype(ml_dtypes.bfloat16).reshape(2, 1, 4),
        "f": np.ones((5,), np.float32),
    }
    save_file(tensors, str(tmp_path / "t.safetensors"))
    src = FileBytes(tmp_path / "t.safetensors")
    arrays = safetensors_arrays(src)
    for name, value in tensors.items():
        np.testing.assert_array_equal(read_array(src, arrays[name]), value)
        assert arrays[name].dtype == value.dtype
    np.testing.assert_array_equal(read_rows(src, arrays["weight"].sub(1), 1, 3),
                                  tensors["weight"][1, 1:3])
    src.close()


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointFormatError, match="not a safetensors file"):
        safetensors_arrays(FileBytes(tmp_path / "bad.safetensors"))


def _header_file(tmp_path, header: bytes, payload: bytes = b"") -> FileBytes:
    header += b" " * (-len(header) % 8)
    path = tmp_path / "t.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    return FileBytes(path)


@pytest.mark.parametrize("header, message", [
    (b"[1, 2]", "at byte 8: safetensors header is not a JSON object"),
    # a negative offset would read the header's own bytes as the tensor
    (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [-8, 8]}}',
     "at byte 8: tensor 'w': bad shape [4] or data_offsets [-8, 8]"),
    (b'{"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 0]}}',
     "tensor 'w': bad shape [-4]"),
])
def test_a_malformed_safetensors_header_is_refused_naming_file_and_tensor(tmp_path, header,
                                                                          message):
    with pytest.raises(CheckpointFormatError, match=message.replace("[", r"\[")):
        safetensors_arrays(_header_file(tmp_path, header, b"\0" * 64))


def test_a_file_shorter_than_the_header_length_says_so(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\n")
    with pytest.raises(CheckpointFormatError, match="short.safetensors at byte 0: not a "
                                                    "safetensors file"):
        safetensors_arrays(FileBytes(tmp_path / "short.safetensors"))
