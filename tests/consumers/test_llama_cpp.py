"""llama.cpp computes the official model from a repack: convert_hf_to_gguf.py, then llama.h."""

from __future__ import annotations

import subprocess

import build_cache
import numpy as np
import pytest
from figures import cosine, record, rel_l2

pytestmark = pytest.mark.consumers

# The golden set's thresholds (tests/test_smoke.py): an exact float32 forward, and one whose
# weights were rounded to bf16 (the rounding compounds over the layers).
THRESHOLDS = {"f32": (0.999, 0.03), "bf16": (0.998, 0.06)}


@pytest.fixture(scope="module")
def llama(cache):
    return build_cache.build_llama(cache)


def convert(llama, model_dir, out, outtype: str) -> None:
    r = subprocess.run([llama["python"], llama["converter"], model_dir, "--outfile", out,
                        "--outtype", outtype], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def run_harness(llama, gguf, out_dir, tokens, kv="f32") -> str:
    out_dir.mkdir()
    r = subprocess.run([llama["harness"], gguf, out_dir, ",".join(map(str, tokens)), kv],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_llama_cpp_runs_the_official_model_from_the_sglang_repack(
        llama, sglang_repacks, golden, dtype, tmp_path):
    ref = golden["ref"]
    tokens = golden["tokens"]
    convert(llama, sglang_repacks[dtype], tmp_path / "m.gguf", dtype)
    info = run_harness(llama, tmp_path / "m.gguf", tmp_path / "out", tokens)
    n_tokens, d = ref["h0"].shape
    n_layers, vocab = ref["h_layer"].shape[0], ref["logits"].shape[1]
    assert f"n_vocab={vocab} n_embd={d} n_layer={n_layers} n_tokens={n_tokens}" in info
    out = tmp_path / "out"
    logits = np.fromfile(out / "logits.f32", np.float32).reshape(n_tokens, vocab)
    hidden = np.stack([np.fromfile(out / f"l_out-{i}.f32", np.float32).reshape(n_tokens, d)
                       for i in range(n_layers)])
    experts = np.stack([np.fromfile(out / f"ffn_moe_topk-{i}.i32", np.int32).reshape(n_tokens, -1)
                        for i in range(n_layers)])
    min_cos, max_rel = THRESHOLDS[dtype]
    figures = dict(
        logits_cos=round(float(cosine(logits, ref["logits"]).min()), 5),
        logits_rel=round(float(rel_l2(logits, ref["logits"]).max()), 4),
        hidden_cos=round(float(cosine(hidden, ref["h_layer"]).min()), 5),
        hidden_rel=round(float(rel_l2(hidden, ref["h_layer"]).max()), 4),
    )
    record(f"llama.cpp {dtype}", **figures)
    assert figures["logits_cos"] >= min_cos and figures["hidden_cos"] >= min_cos
    assert figures["logits_rel"] <= max_rel and figures["hidden_rel"] <= max_rel
    np.testing.assert_array_equal(logits.argmax(-1), ref["logits"].argmax(-1))
    np.testing.assert_array_equal(np.sort(experts, -1), np.sort(ref["expert_idx"], -1))


def test_the_gguf_carries_the_tokenizer_and_grok_constants(llama, sglang_repacks, golden,
                                                            tmp_path):
    convert(llama, sglang_repacks["f32"], tmp_path / "m.gguf", "f32")
    code = (
        "import sys, json, gguf\n"
        "r = gguf.GGUFReader(sys.argv[1])\n"
        "def v(k):\n"
        "    f = r.fields[k]\n"
        "    return f.contents()\n"
        "keys = ['grok.attention.output_scale', 'grok.embedding_scale', 'grok.logit_scale',\n"
        "        'tokenizer.ggml.model', 'tokenizer.ggml.bos_token_id',\n"
        "        'tokenizer.ggml.eos_token_id', 'tokenizer.ggml.add_bos_token']\n"
        "out = {k: v(k) for k in keys if k in r.fields}\n"
        "out['n_tokens'] = len(r.fields['tokenizer.ggml.tokens'].contents())\n"
        "out['first'] = r.fields['tokenizer.ggml.tokens'].contents()[:4]\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([llama["python"], "-c", code, tmp_path / "m.gguf"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    got = json.loads(r.stdout)
    cfg = golden["config"]
    assert got["grok.attention.output_scale"] == pytest.approx(cfg.attn_output_multiplier)
    assert got["grok.embedding_scale"] == pytest.approx(cfg.embedding_multiplier_scale)
    assert got["grok.logit_scale"] == pytest.approx(cfg.output_multiplier_scale)
    assert got["tokenizer.ggml.model"] == "llama"
    assert got["first"] == ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    assert got["n_tokens"] == cfg.vocab_size
    assert got["tokenizer.ggml.bos_token_id"] == 1 and got["tokenizer.ggml.eos_token_id"] == 2
    assert got["tokenizer.ggml.add_bos_token"] is False  # the official runner adds no BOS
