"""The streaming safetensors writer, read back with the reference reader.

Every file written here is opened with ``safetensors.safe_open(framework='numpy')``
(which maps BF16 to ml_dtypes' bfloat16) and compared exactly.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save

from grokfetch.errors import CheckpointFormatError, UsageError
from grokfetch.format import safetensors as sio
from grokfetch.format.arrays import ArrayRef
from grokfetch.format.files import FileBytes
from grokfetch.format.safetensors import Tensor, write_safetensors
from grokfetch.hashing import file_digests

BF16 = np.dtype(ml_dtypes.bfloat16)


def stash(folder: Path, **arrays: np.ndarray) -> dict[str, ArrayRef]:
    """Write arrays back to back after some junk bytes, like payloads inside a pickle."""
    path = folder / "source.bin"
    out = {}
    with open(path, "wb") as f:
        f.write(b"\x80\x04junk-prefix")
        for name, a in arrays.items():
            out[name] = ArrayRef(path, f.tell(), a.dtype, a.shape)
            f.write(np.ascontiguousarray(a).tobytes())
        f.write(b"trailer")
    return out


def read_all(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def dequant(w: np.ndarray, s: np.ndarray, out: np.dtype) -> np.ndarray:
    """The reference: W = weight * scales per row group, in float32, then cast."""
    *lead, k, n = w.shape
    g = s.shape[-2]
    full = w.astype(np.float32).reshape(*lead, g, k // g, n) * s.astype(np.float32)[..., :, None, :]
    return full.reshape(w.shape).astype(out)


@pytest.fixture
def small_blocks(monkeypatch):
    """Force many blocks per tensor so block boundaries are exercised."""
    monkeypatch.setattr(sio, "COPY_BLOCK", 1000)
    monkeypatch.setattr(sio, "BLOCK_ELEMENTS", 50)


def test_header_is_byte_identical_to_the_reference_serializer(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "weight": rng.integers(-128, 128, (3, 5), dtype=np.int8),
        "scales": rng.standard_normal((1, 5)).astype(BF16),
        "norm": rng.standard_normal(7).astype(np.float32),
    }
    src = stash(tmp_path, **arrays)
    out = tmp_path / "x.safetensors"
    write_safetensors(out, [Tensor(k, v) for k, v in src.items()], {"param": "a/b"})
    assert out.read_bytes() == save(arrays, metadata={"param": "a/b"})


def test_header_is_padded_to_eight_bytes(tmp_path):
    src = stash(tmp_path, a=np.zeros(1, np.int8))
    head = sio.header_bytes([Tensor("a", src["a"])], {"k": "v"})
    n = int.from_bytes(head[:8], "little")
    assert n % 8 == 0 and len(head) == 8 + n
    assert head.endswith(b" ") or head.endswith(b"}")


def test_copy_round_trip_across_many_blocks(tmp_path, small_blocks):
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (4, 30, 50), dtype=np.int8)
    s = rng.standard_normal((4, 2, 50)).astype(BF16)
    src = stash(tmp_path, w=w, s=s)
    res = write_safetensors(
        tmp_path / "q.safetensors",
        [Tensor("weight", src["w"]), Tensor("scales", src["s"])],
        {"param": "transformer/decoder_layer_0/moe/linear_1"},
    )
    got, meta = read_all(res.path)
    assert got["weight"].dtype == np.int8 and np.array_equal(got["weight"], w)
    assert got["scales"].dtype == BF16 and np.array_equal(got["scales"].view(np.uint16),
                                                          s.view(np.uint16))
    assert meta == {"param": "transformer/decoder_layer_0/moe/linear_1"}
    assert res.tensors == ("scales", "weight")
    assert res.payload_bytes == w.nbytes + s.nbytes


@pytest.mark.parametrize("out", [BF16, np.dtype(np.float32)])
@pytest.mark.parametrize("groups", [1, 8])
def test_dequantize_equals_reference(tmp_path, small_blocks, out, groups):
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (3, 16, 12), dtype=np.int8)
    s = rng.standard_normal((3, groups, 12)).astype(BF16)
    src = stash(tmp_path, w=w, s=s)
    res = write_safetensors(tmp_path / "d.safetensors",
                            [Tensor("weight", src["w"], out_dtype=out, scales=src["s"])])
    got, _ = read_all(res.path)
    assert got["weight"].dtype == out
    assert np.array_equal(got["weight"], dequant(w, s, out))


def test_plain_float32_to_bf16_rounds_like_ml_dtypes(tmp_path, small_blocks):
    a = np.random.default_rng(3).standard_normal((9, 11)).astype(np.float32)
    src = stash(tmp_path, a=a)
    res = write_safetensors(tmp_path / "p.safetensors", [Tensor("weight", src["a"], BF16)])
    got, _ = read_all(res.path)
    assert np.array_equal(got["weight"].view(np.uint16), a.astype(BF16).view(np.uint16))


@pytest.mark.parametrize("groups", [None, 1, 4])
def test_expert_slice_transposed_is_out_in(tmp_path, small_blocks, groups):
    rng = np.random.default_rng(4)
    w = rng.integers(-128, 128, (3, 8, 20), dtype=np.int8)  # [E, K=in, N=out]
    s = rng.standard_normal((3, groups or 1, 20)).astype(BF16)
    src = stash(tmp_path, w=w, s=s)
    tensors = [
        Tensor(f"experts.{e}.weight", src["w"], out_dtype=BF16,
               scales=src["s"] if groups else None, expert=e, transpose=True)
        for e in range(3)
    ]
    res = write_safetensors(tmp_path / "t.safetensors", tensors)
    got, _ = read_all(res.path)
    for e in range(3):
        want = dequant(w[e], s[e], BF16) if groups else w[e].astype(BF16)
        assert got[f"experts.{e}.weight"].shape == (20, 8)
        assert np.array_equal(got[f"experts.{e}.weight"], want.T)


def test_expert_slice_without_conversion_is_a_plain_copy(tmp_path):
    w = np.arange(2 * 3 * 4, dtype=np.int8).reshape(2, 3, 4)
    src = stash(tmp_path, w=w)
    t = Tensor("e1", src["w"], expert=1)
    assert t.is_copy and t.shape == (3, 4)
    res = write_safetensors(tmp_path / "e.safetensors", [t])
    assert np.array_equal(read_all(res.path)[0]["e1"], w[1])


def test_hashes_match_the_hashing_engine(tmp_path, small_blocks):
    w = np.random.default_rng(5).integers(-128, 128, (64, 100), dtype=np.int8)
    src = stash(tmp_path, w=w)
    res = write_safetensors(tmp_path / "h.safetensors", [Tensor("w", src["w"])], chunk_size=1024)
    ref = file_digests(res.path, 1024)
    assert (res.blake3, res.chunks) == (ref.blake3, ref.chunks)
    assert res.size == res.path.stat().st_size and len(res.chunks) == -(-res.size // 1024)


def test_without_chunk_hashes_only_the_whole_file_is_hashed(tmp_path, small_blocks):
    w = np.random.default_rng(5).integers(-128, 128, (40, 100), dtype=np.int8)
    src = stash(tmp_path, w=w)
    for chunk_size, want in ((1024, None), (1 << 20, "one")):
        res = write_safetensors(tmp_path / "h.safetensors", [Tensor("w", src["w"])],
                                chunk_size=chunk_size, chunked=False)
        ref = file_digests(res.path, chunk_size)
        assert res.blake3 == ref.blake3 and res.size == res.path.stat().st_size
        # larger than a chunk: no chunk list; at most one chunk: its hash is the file's
        assert res.chunks == (None if want is None else [ref.blake3] == ref.chunks and
                              ref.chunks)


def test_zstd_round_trip_hashes_the_compressed_file(tmp_path, small_blocks):
    rng = np.random.default_rng(6)
    w = rng.integers(-4, 4, (40, 64), dtype=np.int8)
    s = rng.standard_normal((1, 64)).astype(BF16)
    src = stash(tmp_path, w=w, s=s)
    tensors = [Tensor("weight", src["w"]), Tensor("scales", src["s"])]
    plain = write_safetensors(tmp_path / "p.safetensors", tensors, {"m": "1"})
    packed = write_safetensors(tmp_path / "p.safetensors.zst", tensors, {"m": "1"},
                               compress_level=3, chunk_size=512)
    raw = zstandard.ZstdDecompressor().stream_reader(open(packed.path, "rb")).read()
    assert raw == plain.path.read_bytes()
    assert packed.size < plain.size
    ref = file_digests(packed.path, 512)
    assert (packed.blake3, packed.chunks) == (ref.blake3, ref.chunks)


def test_read_header(tmp_path):
    src = stash(tmp_path, a=np.zeros((2, 2), np.float32))
    res = write_safetensors(tmp_path / "r.safetensors", [Tensor("a", src["a"])], {"k": "v"})
    head = sio.read_header(FileBytes(res.path))
    start = head.payload_start
    assert head.metadata == {"k": "v"}
    # {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    assert head.arrays["a"] == ArrayRef(res.path, start + 0, np.dtype(np.float32), (2, 2))
    assert head.arrays["a"].nbytes == 16
    assert start % 8 == 0
    (tmp_path / "one-byte").write_bytes(b"\x01")
    with pytest.raises(CheckpointFormatError):
        sio.read_header(FileBytes(tmp_path / "one-byte"))


def test_metadata_values_must_be_strings(tmp_path):
    src = stash(tmp_path, a=np.zeros(2, np.int8))
    with pytest.raises(UsageError, match="str to str"):
        write_safetensors(tmp_path / "m.safetensors", [Tensor("a", src["a"])], {"n": 3})
    assert list(tmp_path.glob("m*")) == []


def test_scales_that_do_not_fit_are_refused(tmp_path):
    src = stash(tmp_path, w=np.zeros((6, 4), np.int8), s=np.zeros((4, 4), BF16))
    with pytest.raises(UsageError, match="do not fit"):
        write_safetensors(tmp_path / "bad.safetensors",
                          [Tensor("w", src["w"], BF16, scales=src["s"])])


def test_source_shorter_than_promised_leaves_no_file(tmp_path):
    src = stash(tmp_path, w=np.zeros(100, np.int8))["w"]
    lying = ArrayRef(src.path, src.offset, src.dtype, (10_000,))
    for t in (Tensor("w", lying), Tensor("w", lying, out_dtype=BF16)):
        with pytest.raises(CheckpointFormatError, match="source.bin"):
            write_safetensors(tmp_path / "out" / "w.safetensors", [t])
        assert list((tmp_path / "out").iterdir()) == []


def test_an_output_that_cannot_be_written_is_a_disk_error_naming_it(tmp_path):
    from grokfetch.errors import DiskError

    src = stash(tmp_path, w=np.zeros(100, np.int8))["w"]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DiskError, match="a-file/w.safetensors: cannot write"):
        write_safetensors(tmp_path / "a-file" / "w.safetensors", [Tensor("w", src)])


def test_an_unreadable_source_is_named_as_the_checkpoint_file(tmp_path):
    src = stash(tmp_path, w=np.zeros(100, np.int8))["w"]
    gone = ArrayRef(tmp_path / "vanished.bin", src.offset, src.dtype, src.shape)
    with pytest.raises(CheckpointFormatError, match="vanished.bin: cannot read"):
        write_safetensors(tmp_path / "out" / "w.safetensors", [Tensor("w", gone)])


@settings(max_examples=25, deadline=None)
@given(
    lead=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 4]),
    rows_per_group=st.integers(1, 5),
    cols=st.integers(1, 9),
    block=st.integers(1, 40),
    transpose=st.booleans(),
)
def test_dequantize_any_shape_any_block_size(tmp_path_factory, lead, groups, rows_per_group,
                                             cols, block, transpose):
    folder = tmp_path_factory.mktemp("h")
    rng = np.random.default_rng(lead * 1000 + cols)
    w = rng.integers(-128, 128, (lead, groups * rows_per_group, cols), dtype=np.int8)
    s = rng.standard_normal((lead, groups, cols)).astype(BF16)
    src = stash(folder, w=w, s=s)
    old = sio.BLOCK_ELEMENTS
    sio.BLOCK_ELEMENTS = block
    try:
        tensors = [Tensor(f"t{e}", src["w"], BF16, src["s"], expert=e, transpose=transpose)
                   for e in range(lead)]
        got, _ = read_all(write_safetensors(folder / "o.safetensors", tensors).path)
    finally:
        sio.BLOCK_ELEMENTS = old
    for e in range(lead):
        want = dequant(w[e], s[e], BF16)
        assert np.array_equal(got[f"t{e}"], want.T if transpose else want)
