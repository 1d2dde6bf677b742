"""The SGLang layout, written and read by one module: names agree, config.json round-trips."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grokfetch.errors import UsageError
from grokfetch.format import sglang
from grokfetch.format.arrays import BFLOAT16
from grokfetch.format.checkpoint import open_checkpoint
from grokfetch.format.layout import ModelConfig
from grokfetch.format.pickle_reader import scan

# ModelConfig fields config.json does not carry: the widening factor only as the ffn
# size it gives; attn_output_multiplier not at all (SGLang hard-codes Grok-1's value).
NOT_IN_CONFIG_JSON = {"widening_factor", "attn_output_multiplier"}


@st.composite
def model_configs(draw) -> ModelConfig:
    key_size = draw(st.sampled_from([8, 16, 32, 64, 128]))
    kv = draw(st.integers(1, 8))
    experts = draw(st.integers(1, 8))
    finite = {"allow_nan": False, "allow_infinity": False}
    return ModelConfig(
        vocab_size=draw(st.integers(1, 200_000)),
        emb_size=8 * draw(st.integers(1, 1024)),
        key_size=key_size,
        num_q_heads=kv * draw(st.integers(1, 8)),
        num_kv_heads=kv,
        num_layers=draw(st.integers(1, 96)),
        num_experts=experts,
        num_selected_experts=draw(st.integers(1, experts)),
        widening_factor=draw(st.floats(0.5, 16, **finite)),
        embedding_multiplier_scale=draw(st.floats(0.01, 100, **finite)),
        output_multiplier_scale=draw(st.floats(0.01, 100, **finite)),
        rms_norm_eps=draw(st.floats(1e-12, 1e-2, **finite)),
        rope_base=draw(st.floats(1, 1e7, **finite)),
        attn_logit_softcap=draw(st.floats(1, 100, **finite)),
        sequence_len=draw(st.integers(1, 1 << 20)),
        pad_token=draw(st.integers(0, 10)),
        eos_token=draw(st.integers(0, 10)),
    )


@given(model_configs(), st.sampled_from(["bf16", "f32"]))
def test_config_json_round_trips_every_field_it_carries(cfg, dtype):
    written = sglang.config_to_hf(cfg, dtype)
    back = sglang.config_from_hf(written)
    for f in dataclasses.fields(ModelConfig):
        if f.name not in NOT_IN_CONFIG_JSON:
            assert getattr(back, f.name) == getattr(cfg, f.name), f.name
    assert back.ffn_size == cfg.ffn_size  # what the widening factor is for
    assert sglang.config_to_hf(back, dtype) == written


def test_config_json_without_a_required_field_is_refused_by_name():
    written = sglang.config_to_hf(ModelConfig(512, 128, 32, 4, 2, 12), "bf16")
    del written["num_local_experts"]
    with pytest.raises(UsageError, match="config.json lacks 'num_local_experts'"):
        sglang.config_from_hf(written)


def test_the_writer_names_every_tensor_as_the_reader_looks_it_up(mini_ckpt):
    ckpt = open_checkpoint(mini_ckpt)
    for spec in ckpt.params:
        tensors = sglang.tensors_for(spec, scan(ckpt.path_of(spec)), BFLOAT16)
        if spec.short.startswith("moe/"):
            looked_up = [sglang.name_of(spec, e) for e in range(ckpt.config.num_experts)]
        elif spec.module == "language_model/in_out_embed":
            looked_up = [sglang.name_of(spec), (sglang.LM_HEAD, False)]
        else:
            looked_up = [sglang.name_of(spec)]
        assert [(t.name, t.transpose) for t in tensors] == looked_up, spec.module
