"""The synthesizer writes byte for byte what numpy 1.x + pickle protocol 4 wrote."""

from __future__ import annotations

import dataclasses
import pickle
import sys

import ml_dtypes
import numpy as np
import pytest
from helpers import GOLDEN

from grokfetch.format.layout import GROK1, ModelConfig, param_list
from grokfetch.format.pickle_reader import scan
from grokfetch.format.pickle_writer import ArrayData, pickled_size, write_param_file
from grokfetch.synth import write_param


def test_rewriting_the_golden_files_gives_identical_bytes(tmp_path):
    """Read each official file (safely), write it again: same bytes, all 146 files."""
    for src in sorted((GOLDEN / "ckpt-0").iterdir()):
        pf = scan(src)
        arrays = {name: ArrayData.of(np.asarray(a)) for name, a in pf.load().items()}
        out = tmp_path / src.name
        write_param_file(out, pf.kind, arrays)
        assert out.read_bytes() == src.read_bytes(), src.name


@dataclasses.dataclass
class QuantizedWeight8bit:  # the shape of the official dataclass, for the C pickler
    weight: np.ndarray
    scales: np.ndarray


@pytest.mark.parametrize("n1", [1, 255, 256, 40000, 65535, 65536, 70000])
@pytest.mark.parametrize("n2", [3, 300, 40000, 65536])
def test_framing_matches_the_c_pickler(tmp_path, monkeypatch, n1, n2):
    """Frame boundaries (64 KiB target, large payloads outside frames) as CPython does."""
    monkeypatch.setattr(QuantizedWeight8bit, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "QuantizedWeight8bit", QuantizedWeight8bit,
                        raising=False)
    rng = np.random.default_rng(n1 * n2)
    w = rng.integers(-127, 128, (1, n1), dtype=np.int8)
    s = rng.random((1, n2)).astype(ml_dtypes.bfloat16)
    want = pickle.dumps(QuantizedWeight8bit(w, s), protocol=4)
    out = tmp_path / "q"
    # numpy 2 is installed here, so the C pickler spells numpy._core: compare in that spelling.
    spelling = 2 if np.__version__.startswith("2") else 1
    write_param_file(out, "quantized", {"weight": ArrayData.of(w), "scales": ArrayData.of(s)},
                     numpy_spelling=spelling)
    assert out.read_bytes() == want
    a = rng.random(n1).astype(np.float32)
    write_param_file(out, "ndarray", {"array": ArrayData.of(a)}, numpy_spelling=spelling)
    assert out.read_bytes() == pickle.dumps(a, protocol=4)


def _spec(module_suffix: str):
    return next(p for p in param_list(GROK1) if p.module.endswith(module_suffix))


@pytest.mark.parametrize("module,size", [
    ("decoder_layer_0/rms_norm", 24_727),
    ("decoder_layer_0/router", 196_770),
    ("decoder_layer_0/multi_head_attention/key", 6_293_814),
    ("decoder_layer_0/multi_head_attention/query", 37_761_334),
    ("decoder_layer_0/multi_head_attention/linear", 37_847_359),
])
def test_real_small_parameters_have_the_real_file_sizes(tmp_path, module, size):
    out = tmp_path / "t"
    assert write_param(out, _spec(module), seed=1) == size
    assert out.stat().st_size == size
    assert scan(out).kind == _spec(module).kind


def test_real_embedding_payload_starts_at_byte_151(tmp_path):
    # Written sparse (a hole instead of 3 GB of data) - same framing, no disk used.
    out = tmp_path / "tensor00000_000"
    size = write_param(out, _spec("language_model/in_out_embed"), sparse=True)
    assert size == 3_221_225_637
    pf = scan(out)
    assert pf.arrays["array"].offset == 151
    assert pf.arrays["array"].shape == (131072, 6144)


def test_every_real_file_size_from_framing():
    def arrays(p):
        return {a.name: ArrayData(np.dtype(ml_dtypes.bfloat16) if a.dtype == "bfloat16"
                                  else np.dtype(a.dtype), a.shape) for a in p.arrays}

    sizes = [pickled_size(p.kind, arrays(p)) for p in param_list(GROK1)]
    assert sum(sizes) == 318_239_886_140
    assert sorted(set(sizes)) == [24_727, 196_770, 6_293_814, 37_761_334, 37_847_359,
                                  1_611_137_347, 1_611_399_491, 3_221_225_637]


def test_tiny_config_sizes_match_golden():
    cfg = ModelConfig.from_dict({"meta": {"config": {
        "vocab_size": 256, "emb_size": 64, "key_size": 16, "num_q_heads": 4,
        "num_kv_heads": 2, "num_layers": 12, "widening_factor": 8}}})
    for p in param_list(cfg):
        arrays = {a.name: ArrayData(np.dtype(ml_dtypes.bfloat16) if a.dtype == "bfloat16"
                                    else np.dtype(a.dtype), a.shape) for a in p.arrays}
        assert pickled_size(p.kind, arrays) == (GOLDEN / p.file).stat().st_size
