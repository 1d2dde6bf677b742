"""The SGLang / Hugging Face layout of Grok-1: tensor names, orientation, config.json.

SGLang's Grok-1 loader (``Grok1ForCausalLM``) reads safetensors shards with
an index (``model.safetensors.index.json``) and an HF-style ``config.json``.
Its tensors differ from the checkpoint's in three ways (docs/FORMAT.md, "The
SGLang layout"; README, "The SGLang / llama.cpp layout"):

* names: ``model.layers.L.self_attn.q_proj.weight`` for
  ``transformer/decoder_layer_L/multi_head_attention/query``, and so on;
* orientation: every 2-D weight below a layer is [out, in] (PyTorch
  ``nn.Linear``), the transpose of the checkpoint's [in, out];
* experts: each MoE weight [E, in, out] becomes E tensors
  ``block_sparse_moe.experts.e.w1/w2/w3``.

This module is the one place that knows it: repack writes with
``tensors_for`` and ``config_to_hf``, the forward pass's loader reads with
``name_of`` and ``config_from_hf``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grokfetch.errors import UsageError
from grokfetch.format.layout import ModelConfig, ParamSpec
from grokfetch.format.pickle_reader import ParamFile
from grokfetch.format.safetensors import Tensor

CONFIG_NAME = "config.json"
ARCHITECTURE = "Grok1ForCausalLM"

EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"  # the same table as the embedding: logits = h @ embed.T
FINAL_NORM = "model.norm.weight"

# Checkpoint module (below decoder_layer_L/) -> SGLang name (below model.layers.L.).
LAYER_NAMES = {
    "rms_norm": "pre_attn_norm",
    "rms_norm_1": "post_attn_norm",
    "rms_norm_2": "pre_moe_norm",
    "rms_norm_3": "post_moe_norm",
    "multi_head_attention/query": "self_attn.q_proj",
    "multi_head_attention/key": "self_attn.k_proj",
    "multi_head_attention/value": "self_attn.v_proj",
    "multi_head_attention/linear": "self_attn.o_proj",
    "router": "block_sparse_moe.gate",
    "moe/linear": "block_sparse_moe.experts.{e}.w1",
    "moe/linear_v": "block_sparse_moe.experts.{e}.w3",
    "moe/linear_1": "block_sparse_moe.experts.{e}.w2",
}
ROUTER_DTYPE = np.dtype(np.float32)  # SGLang keeps the gate in float32 whatever the rest is


def name_of(spec: ParamSpec, expert: int | str | None = None) -> tuple[str, bool]:
    """(SGLang tensor name, stored transposed?) of a parameter (of one expert of it).

    ``expert`` fills the ``{e}`` of an MoE weight's name ('*' names them all).
    """
    if spec.module == "language_model/in_out_embed":
        return EMBEDDING, False
    if spec.module == "language_model/rms_norm":
        return FINAL_NORM, False
    if spec.layer is None:
        raise UsageError(f"{spec.module}: no SGLang name")
    sub = spec.short
    name = f"model.layers.{spec.layer}.{LAYER_NAMES[sub].format(e=expert)}.weight"
    return name, not sub.startswith("rms_norm")  # norms are 1-D; every matrix is [out, in]


def tensors_for(spec: ParamSpec, pf: ParamFile, out: np.dtype) -> list[Tensor]:
    """The SGLang tensors one parameter file becomes, in ``out`` (bf16 or f32)."""
    if spec.module == "language_model/in_out_embed":
        # Raw copies: SGLang multiplies by embedding/output_multiplier_scale itself.
        a = pf.arrays["array"]
        return [Tensor(EMBEDDING, a, out), Tensor(LM_HEAD, a, out)]
    name, transposed = name_of(spec)
    if spec.kind != "quantized":
        dtype = ROUTER_DTYPE if spec.short == "router" else out
        return [Tensor(name, pf.arrays["array"], dtype, transpose=transposed)]
    w, s = pf.arrays["weight"], pf.arrays["scales"]
    if spec.short.startswith("moe/"):
        return [Tensor(name_of(spec, e)[0], w, out, scales=s, expert=e, transpose=transposed)
                for e in range(w.shape[0])]
    return [Tensor(name, w, out, scales=s, transpose=transposed)]


# config.json field <- ModelConfig field, in the order written.  A field added here is
# written by repack and read back by the loader (tests/test_sglang_format.py checks both).
HF_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "emb_size",
    "intermediate_size": "ffn_size",  # derived from emb_size and widening_factor
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_q_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "key_size",
    "num_local_experts": "num_experts",
    "num_experts_per_tok": "num_selected_experts",
    "max_position_embeddings": "sequence_len",
    "rms_norm_eps": "rms_norm_eps",
    "rope_theta": "rope_base",
    "embedding_multiplier_scale": "embedding_multiplier_scale",
    "output_multiplier_scale": "output_multiplier_scale",
    "attn_logit_softcapping": "attn_logit_softcap",
    # llama.cpp's converter otherwise scales attention by head_dim ** -0.5, which is
    # Grok-1's multiplier only at head size 128.
    "attn_output_multiplier": "attn_output_multiplier",
    "pad_token_id": "pad_token",
    "eos_token_id": "eos_token",
}
# Without these config.json names no model: the others have the official defaults.
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "num_local_experts",
             "num_experts_per_tok")


def config_to_hf(cfg: ModelConfig, dtype: str, bos_token: int | None = None) -> dict[str, Any]:
    """config.json for SGLang, llama.cpp's converter and vLLM (and transformers' AutoConfig).

    Each key some consumer's Grok loader reads is here (tests/consumers/required_keys.json
    lists them per consumer); a missing one is silently replaced by that loader's default.
    """
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "mixtral",
        **{theirs: getattr(cfg, ours) for theirs, ours in HF_FIELDS.items()},
        # Grok-1's router has no soft cap (vLLM's Grok loader caps at 30 unless told 0).
        "router_logit_softcapping": 0.0,
        # Present, vLLM 0.24 takes its Grok class whose names are ours (w1/w2/w3); SGLang
        # reads it as the expert width.  Grok-1 does not renormalise the top-2 gates.
        "moe_intermediate_size": cfg.ffn_size,
        "moe_router_renormalize": False,
        **({"bos_token_id": bos_token} if bos_token is not None else {}),
        "hidden_act": "gelu_pytorch_tanh",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16" if dtype == "bf16" else "float32",
        # SGLang defaults load_presharded_moe to true under tensor parallelism.
        "load_presharded_moe": False,
        "load_presharded_attn": False,
        "load_presharded_embedding": False,
        "load_presharded_mlp": False,
    }


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    """The model of a Hugging Face style config.json (what ``config_to_hf`` writes)."""
    missing = [k for k in _REQUIRED if d.get(k) is None]
    if missing:
        raise UsageError(f"config.json lacks {missing[0]!r} (pass --config)")
    ours: dict[str, Any] = {o: d[t] for t, o in HF_FIELDS.items() if d.get(t) is not None}
    try:
        emb, ffn = int(d["hidden_size"]), int(ours.pop("ffn_size"))
        ours.setdefault("key_size", emb // int(d["num_attention_heads"]))
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise UsageError(f"config.json: {e} (pass --config)") from None
    # ffn_size(emb, 1.5 * ffn / emb) == ffn for any ffn that is a multiple of 8
    ours["widening_factor"] = 1.5 * ffn / emb if emb else 0.0
    return ModelConfig.from_dict(ours)
