"""``--layout sglang``: the names, orientation and expert split SGLang's Grok-1 loader reads."""

from __future__ import annotations

import json
from collections import Counter

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from test_repack import assert_manifest_verifies
from test_safetensors_io import dequant

from grokfetch.format.checkpoint import open_checkpoint
from grokfetch.format.folder import INDEX_NAME
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest
from grokfetch.format.pickle_reader import scan
from grokfetch.format.sglang import LAYER_NAMES as SGLANG_LAYER_NAMES
from grokfetch.repack.run import repack

BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def sglang_dest(mini_ckpt, tmp_path_factory):
    dest = tmp_path_factory.mktemp("sglang") / "out"
    # Mini tensors are tiny: a 1 MB shard size gives several shards, as 5 GB does for Grok-1.
    repack(mini_ckpt, dest, layout="sglang", shard_size=1_000_000, chunk_size=64 * 1024)
    return dest


def expected_names(num_layers: int, num_experts: int) -> set[str]:
    names = {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}
    for layer in range(num_layers):
        p = f"model.layers.{layer}"
        names |= {f"{p}.{n}.weight" for n in ("pre_attn_norm", "post_attn_norm",
                                                "pre_moe_norm", "post_moe_norm",
                                                "self_attn.q_proj", "self_attn.k_proj",
                                                "self_attn.v_proj", "self_attn.o_proj",
                                                "block_sparse_moe.gate")}
        names |= {f"{p}.block_sparse_moe.experts.{e}.{w}.weight"
                  for e in range(num_experts) for w in ("w1", "w2", "w3")}
    return names


def test_index_covers_every_tensor_exactly_once(sglang_dest):
    index = json.loads((sglang_dest / INDEX_NAME).read_text())
    weight_map = index["weight_map"]
    assert set(weight_map) == expected_names(12, 8)
    shards = sorted(set(weight_map.values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    seen: Counter[str] = Counter()
    total = 0
    for shard in shards:
        with safe_open(str(sglang_dest / shard), framework="numpy") as f:
            assert f.metadata()["format"] == "pt"
            for k in f.keys():
                seen[k] += 1
                assert weight_map[k] == shard
                t = f.get_tensor(k)
                total += t.nbytes
    assert set(seen) == set(weight_map) and set(seen.values()) == {1}
    assert index["metadata"]["total_size"] == total


def test_every_tensor_is_the_transposed_dequantized_source_slice(mini_ckpt, sglang_dest):
    ckpt = open_checkpoint(mini_ckpt)
    weight_map = json.loads((sglang_dest / INDEX_NAME).read_text())["weight_map"]
    handles = {s: safe_open(str(sglang_dest / s), framework="numpy")
               for s in set(weight_map.values())}

    def get(name: str) -> np.ndarray:
        return handles[weight_map[name]].get_tensor(name)

    checked = 0
    for spec in ckpt.params:
        src = scan(ckpt.path_of(spec)).load()
        if spec.module == "language_model/in_out_embed":
            want = src["array"].astype(BF16)  # raw copy: SGLang applies the multipliers
            for name in ("model.embed_tokens.weight", "lm_head.weight"):
                assert get(name).dtype == BF16 and np.array_equal(get(name), want)
                checked += 1
            continue
        if spec.module == "language_model/rms_norm":
            assert np.array_equal(get("model.norm.weight"), src["array"].astype(BF16))
            checked += 1
            continue
        base = f"model.layers.{spec.layer}.{SGLANG_LAYER_NAMES[spec.short]}"
        if spec.kind == "ndarray" and spec.short == "router":
            got = get(f"{base}.weight")
            assert got.dtype == np.float32 and got.shape == (8, 128)
            assert np.array_equal(got, src["array"].T)
            checked += 1
        elif spec.kind == "ndarray":
            assert np.array_equal(get(f"{base}.weight"), src["array"].astype(BF16))
            checked += 1
        elif spec.short.startswith("moe/"):
            for e in range(8):
                want = dequant(src["weight"][e], src["scales"][e], BF16).T  # [out, in]
                got = get(f"{base.format(e=e)}.weight")
                assert got.dtype == BF16 and np.array_equal(got, want), (spec.module, e)
                checked += 1
        else:
            want = dequant(src["weight"], src["scales"], BF16).T
            assert np.array_equal(get(f"{base}.weight"), want), spec.module
            checked += 1
    assert checked == len(weight_map)


def test_shapes_are_out_in(sglang_dest):
    weight_map = json.loads((sglang_dest / INDEX_NAME).read_text())["weight_map"]
    shapes = {}
    for shard in set(weight_map.values()):
        with safe_open(str(sglang_dest / shard), framework="numpy") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    # mini: emb 128, 4 query heads x 32, 2 kv heads x 32, ffn 176 (official ffn_size rule)
    assert shapes["model.layers.10.self_attn.q_proj.weight"] == (128, 128)
    assert shapes["model.layers.10.self_attn.k_proj.weight"] == (64, 128)
    assert shapes["model.layers.10.block_sparse_moe.experts.3.w1.weight"][1] == 128
    assert shapes["model.layers.10.block_sparse_moe.experts.3.w2.weight"][0] == 128


def test_config_json_has_the_fields_sglang_reads(mini_ckpt, sglang_dest):
    cfg = open_checkpoint(mini_ckpt).config
    c = json.loads((sglang_dest / "config.json").read_text())
    assert c["architectures"] == ["Grok1ForCausalLM"] and c["model_type"] == "mixtral"
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (
        cfg.emb_size, cfg.ffn_size, 12)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (4, 2, 32)
    assert (c["num_local_experts"], c["num_experts_per_tok"]) == (8, 2)
    assert c["embedding_multiplier_scale"] == cfg.embedding_multiplier_scale
    assert c["output_multiplier_scale"] == cfg.output_multiplier_scale
    assert c["attn_logit_softcapping"] == 30.0
    assert c["torch_dtype"] == "bfloat16"
    for k in ("load_presharded_moe", "load_presharded_attn", "load_presharded_embedding",
              "load_presharded_mlp"):
        assert c[k] is False


def test_manifest_lists_shards_with_their_sources(mini_ckpt, sglang_dest):
    m = load_manifest(sglang_dest / MANIFEST_NAME)
    assert m.repack == {"layout": "sglang", "dtype": "bf16", "compress": None}
    shards = [e for e in m.files if e.path.startswith("model-0")]
    pinned = load_manifest(mini_ckpt / MANIFEST_NAME)
    sources = {d["file"]: d["blake3"] for e in shards for d in e.source["files"]}
    assert sources == {f.path: f.blake3 for f in pinned.files}
    assert {e.path for e in m.files} >= {"config.json", INDEX_NAME}
    assert_manifest_verifies(sglang_dest)


def test_a_new_shard_plan_replaces_the_old_shards(mini_ckpt, tmp_path):
    dest = tmp_path / "resharded"
    repack(mini_ckpt, dest, layout="sglang", shard_size=1_000_000, chunk_size=64 * 1024)
    res = repack(mini_ckpt, dest, layout="sglang", shard_size=4_000_000, chunk_size=64 * 1024)
    shards = sorted(p.name for p in dest.glob("model-*.safetensors"))
    assert len(shards) == res.files and all(s.endswith(f"-of-{len(shards):05d}.safetensors")
                                            for s in shards)
    assert_manifest_verifies(dest)


def test_a_run_with_other_layers_does_not_silently_drop_the_earlier_ones(mini_ckpt, tmp_path):
    from grokfetch.errors import UsageError

    dest = tmp_path / "parts"
    repack(mini_ckpt, dest, layout="sglang", layers="0-5")
    before = json.loads((dest / INDEX_NAME).read_text())
    with pytest.raises(UsageError, match="holds an sglang repack with layers 0-5, which this "
                                         "run would drop"):
        repack(mini_ckpt, dest, layout="sglang", layers="6-11")
    assert json.loads((dest / INDEX_NAME).read_text()) == before  # untouched
    repack(mini_ckpt, dest, layout="sglang", layers="0-11")  # a superset is fine
    repack(mini_ckpt, dest, layout="sglang", layers="3", force=True)  # and --force replaces
    index = json.loads((dest / INDEX_NAME).read_text())
    assert {n.split(".")[2] for n in index["weight_map"] if n.startswith("model.layers.")} == {"3"}
