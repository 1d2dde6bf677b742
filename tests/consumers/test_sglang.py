"""SGLang builds its own Grok1ForCausalLM from a repack, and every parameter is the source's.

SGLang runs in its own venv (build_cache.py) through sglang_load.py: its ServerArgs,
ModelConfig (from the repack's config.json), weight discovery and load_weights, on the
CPU with gloo, at tensor parallel 1 and 2.  Here every loaded parameter is compared, bit
for bit, with what the dequantized source checkpoint gives once sharded the way SGLang
shards it.  SGLang's forward pass needs a GPU and is not run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import build_cache
import ml_dtypes
import numpy as np
import pytest
from build_cache import HERE
from figures import record
from safetensors import safe_open

from grokfetch.format.checkpoint import open_checkpoint
from grokfetch.format.pickle_reader import scan
from grokfetch.format.sglang import LAYER_NAMES as SGLANG_LAYER_NAMES
from grokfetch.model.weights import dequantize

pytestmark = pytest.mark.consumers

NP_DTYPES = {"torch.float32": np.dtype(np.float32), "torch.bfloat16": ml_dtypes.bfloat16,
             "torch.float16": np.dtype(np.float16)}
VOCAB_PADDING = 64  # SGLang's VocabParallelEmbedding pads the vocabulary to a multiple of this


@pytest.fixture(scope="module")
def sglang(cache) -> Path:
    return build_cache.build_sglang(cache)


def load_in_sglang(python: Path, model_dir: Path, out: Path, tp: int, dtype: str) -> list[dict]:
    r = subprocess.run([python, HERE / "sglang_load.py", model_dir, out, str(tp), dtype],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((out / f"rank{i}.json").read_text()) for i in range(tp)]


def source_tensors(golden, repack_dtype: str) -> dict[str, np.ndarray]:
    """The dequantized source in SGLang's names, [out, in], as the repack rounds it."""
    ckpt = open_checkpoint(golden["root"], golden["config"])
    out: dict[str, np.ndarray] = {}
    rounding = ml_dtypes.bfloat16 if repack_dtype == "bf16" else np.float32

    def put(name: str, a: np.ndarray) -> None:
        out[name] = np.asarray(a, np.float32).astype(rounding)

    for spec in ckpt.params:
        src = scan(ckpt.path_of(spec)).load()
        if spec.module == "language_model/in_out_embed":
            put("model.embed_tokens.weight", src["array"])
            put("lm_head.weight", src["array"])
        elif spec.module == "language_model/rms_norm":
            put("model.norm.weight", src["array"])
        else:
            base = f"model.layers.{spec.layer}.{SGLANG_LAYER_NAMES[spec.short]}"
            if spec.short == "router":
                out[f"{base}.weight"] = np.asarray(src["array"], np.float32).T  # kept in f32
            elif spec.kind == "ndarray":
                put(f"{base}.weight", src["array"])
            elif spec.short.startswith("moe/"):
                w = dequantize(src["weight"], src["scales"])
                for e in range(w.shape[0]):
                    put(f"{base.format(e=e)}.weight", w[e].T)
            else:
                put(f"{base}.weight", dequantize(src["weight"], src["scales"]).T)
    return out


def expected_params(src: dict[str, np.ndarray], cfg, tp: int, rank: int,
                    output_scale: float) -> dict[str, np.ndarray]:
    """What each SGLang parameter must hold on this tensor-parallel rank (float32 values)."""
    hd, nq, nkv = cfg.key_size, cfg.num_q_heads, cfg.num_kv_heads
    kv_rank = rank // max(1, tp // nkv)  # KV heads are replicated when tp > their count
    kv_per = max(1, nkv // tp)

    def f32(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, np.float32)

    def rows(a: np.ndarray, i: int, n: int) -> np.ndarray:
        return a[i * n:(i + 1) * n]

    padded = -(-cfg.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    per_rank = padded // tp
    v0, v1 = rank * per_rank, min((rank + 1) * per_rank, cfg.vocab_size)
    table = f32(src["lm_head.weight"])
    want = {
        "model.embed_tokens.weight": f32(src["model.embed_tokens.weight"])[v0:v1],
        # SGLang folds output_multiplier_scale into lm_head as it loads (in float32)
        "lm_head.weight": (table * np.float32(output_scale))[v0:v1],
        "model.norm.weight": f32(src["model.norm.weight"]),
    }
    isz = cfg.ffn_size // tp
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}"
        want[f"{p}.self_attn.qkv_proj.weight"] = np.concatenate([
            rows(f32(src[f"{p}.self_attn.q_proj.weight"]), rank, nq // tp * hd),
            rows(f32(src[f"{p}.self_attn.k_proj.weight"]), kv_rank, kv_per * hd),
            rows(f32(src[f"{p}.self_attn.v_proj.weight"]), kv_rank, kv_per * hd)])
        o = f32(src[f"{p}.self_attn.o_proj.weight"])
        want[f"{p}.self_attn.o_proj.weight"] = o[:, rank * (o.shape[1] // tp):
                                                 (rank + 1) * (o.shape[1] // tp)]
        want[f"{p}.block_sparse_moe.gate.weight"] = src[f"{p}.block_sparse_moe.gate.weight"]
        e = f"{p}.block_sparse_moe.experts"
        want[f"{e}.w13_weight"] = np.stack([np.concatenate([
            rows(f32(src[f"{e}.{x}.w1.weight"]), rank, isz),
            rows(f32(src[f"{e}.{x}.w3.weight"]), rank, isz)]) for x in range(cfg.num_experts)])
        want[f"{e}.w2_weight"] = np.stack([
            f32(src[f"{e}.{x}.w2.weight"])[:, rank * isz:(rank + 1) * isz]
            for x in range(cfg.num_experts)])
        for norm in ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm"):
            want[f"{p}.{norm}.weight"] = f32(src[f"{p}.{norm}.weight"])
    return want


def check_rank(out: Path, rank: int, info: dict, want: dict[str, np.ndarray]) -> int:
    """Every parameter SGLang holds equals ``want`` after rounding to its dtype; returns the
    number of parameters checked."""
    assert set(info["params"]) == set(want), set(info["params"]) ^ set(want)
    with safe_open(str(out / f"rank{rank}.safetensors"), framework="numpy") as f:
        for name, expected in want.items():
            got = f.get_tensor(name)
            if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                got = got[:expected.shape[0]]  # rows past the vocabulary are padding
            rounded = np.asarray(expected, np.float32).astype(got.dtype)
            assert got.shape == rounded.shape, (name, got.shape, rounded.shape)
            assert np.array_equal(got, rounded), f"rank {rank}: {name} differs"
    return len(want)


CASES = [("f32", 1, "float32"), ("f32", 2, "float32"), ("bf16", 2, "auto")]


@pytest.mark.parametrize(("repack_dtype", "tp", "sglang_dtype"), CASES,
                         ids=[f"{d}-tp{t}-{s}" for d, t, s in CASES])
def test_sglang_loads_every_parameter_bit_exact(sglang, sglang_repacks, golden, repack_dtype,
                                                tp, sglang_dtype, tmp_path):
    model_dir = sglang_repacks[repack_dtype]
    infos = load_in_sglang(sglang, model_dir, tmp_path, tp, sglang_dtype)
    cfg = golden["config"]
    src = source_tensors(golden, repack_dtype)
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    checked = 0
    for rank, info in enumerate(infos):
        assert info["architecture"] == "Grok1ForCausalLM"
        assert info["head_dim"] == cfg.key_size and info["load_presharded_moe"] is False
        assert set(info["loaded_names"]) == set(info["params"])  # every parameter written
        assert info["dtype"] == ("torch.float32" if repack_dtype == "f32" else "torch.bfloat16")
        checked += check_rank(tmp_path, rank, info, expected_params(
            src, cfg, tp, rank, cfg.output_multiplier_scale))
    record(f"SGLang {repack_dtype} tp={tp} --dtype {sglang_dtype}",
           names_used=len(index["weight_map"]), params_per_rank=len(infos[0]["params"]),
           bit_exact=checked, attn_scaling=infos[0]["attn_scaling"])


def test_sglang_runs_an_f32_repack_in_fp16_unless_told_dtype(sglang, sglang_repacks,
                                                              tmp_path):
    (info,) = load_in_sglang(sglang, sglang_repacks["f32"], tmp_path, 1, "auto")
    assert info["dtype"] == "torch.float16"  # hence the README's --dtype float32


def test_sglang_tokenizer_from_the_repack_encodes_as_sentencepiece(sglang, sglang_repacks):
    code = (
        "import sys, sentencepiece\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from sglang_load import install_stubs\n"
        "install_stubs()\n"
        "from sglang.srt.utils.hf_transformers_utils import get_tokenizer\n"
        "d = sys.argv[1]\n"
        "tok = get_tokenizer(d)\n"
        "sp = sentencepiece.SentencePieceProcessor(model_file=d + '/tokenizer.model')\n"
        "texts = ['The answer to life, the universe and everything is', '  two  spaces\\n"
        "and a newline', 'Grok-1: 314B parameters, 8 experts, 2 active.', 'caf\\u00e9 \\u2603 "
        "\\U0001f600']\n"
        "bad = [t for t in texts if tok.encode(t) != sp.encode(t)]\n"
        "print(type(tok).__name__, tok.bos_token, tok.eos_token, tok.pad_token, len(bad))\n"
        "for t in bad: print(repr(t), tok.encode(t), sp.encode(t))\n"
    )
    r = subprocess.run([sglang, "-c", code, sglang_repacks["bf16"], HERE], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    first = r.stdout.splitlines()[0].split()
    assert first[1:] == ["[BOS]", "[EOS]", "[PAD]", "0"], r.stdout
    record("SGLang tokenizer", cls=first[0], mismatches=first[-1])
