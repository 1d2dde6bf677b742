"""The Grok-1 layout: parameter names, shapes and JAX flatten order."""

from __future__ import annotations

import json

import pytest
from helpers import GOLDEN

from grokfetch.errors import UsageError
from grokfetch.format.layout import (
    GROK1,
    ModelConfig,
    param_list,
    parse_layer_spec,
    select_layers,
)
from grokfetch.format.manifest import load_manifest


def test_real_config_file_positions_follow_string_sorted_layers():
    params = param_list(GROK1)
    assert len(params) == 770
    assert params[0].module == "language_model/in_out_embed"
    assert params[1].module == "language_model/rms_norm"
    assert params[2].module == "transformer/decoder_layer_0/moe/linear"
    # Layer 10 comes right after layer 1: file 26 is layer 10's moe/linear.
    assert params[26].module == "transformer/decoder_layer_10/moe/linear"
    assert params[769].module == "transformer/decoder_layer_9/router"
    assert [p.layer for p in params[2::12]][:4] == [0, 1, 10, 11]


def test_real_shapes_and_scale_groups():
    by = {p.module.split("decoder_layer_0/")[-1]: p for p in param_list(GROK1) if p.layer == 0}
    assert by["moe/linear"].array("weight").shape == (8, 6144, 32768)
    assert by["moe/linear"].array("scales").shape == (8, 1, 32768)
    assert by["moe/linear_1"].array("scales").shape == (8, 8, 6144)
    assert by["moe/linear_1"].scale_groups == 8
    assert by["multi_head_attention/linear"].array("scales").shape == (8, 6144)
    assert by["multi_head_attention/key"].array("weight").shape == (6144, 1024)
    assert by["router"].array("array").shape == (6144, 8)
    assert GROK1.ffn_size == 32768


def test_shipped_manifest_sizes_add_up():
    m = load_manifest("grok-1")
    assert len(m.files) == 770
    assert m.total_size == 318_239_886_140
    assert sum(1 for f in m.files if f.sha256) == 34
    assert m.pinned is False
    assert m.sources.info_hash == "5f96d43576e3d386c9ba65b883210a393b68210e"


def test_golden_layout_matches_the_official_writer():
    layout = json.loads((GOLDEN / "layout.json").read_text())
    cfg = ModelConfig.from_dict(layout)  # accepts {"meta": {"config": ...}}
    for spec, want in zip(param_list(cfg), layout["files"], strict=True):
        assert (spec.file, spec.module, spec.leaf) == (want["file"], want["module"], want["leaf"])


@pytest.mark.parametrize("spec,want", [
    ("0", [0]), ("0-3,10", [0, 1, 2, 3, 10]), ("3,1,2", [1, 2, 3]), ("11", [11]),
])
def test_parse_layer_spec(spec, want):
    assert parse_layer_spec(spec, 12) == want


@pytest.mark.parametrize("spec", ["12", "3-1", "a", "", "-1", "0-12"])
def test_parse_layer_spec_rejects(spec):
    with pytest.raises(UsageError):
        parse_layer_spec(spec, 12)


def test_select_layers_always_include_embedding_and_final_norm():
    params = select_layers(param_list(GROK1), {10})
    modules = [p.module for p in params]
    assert modules[:2] == ["language_model/in_out_embed", "language_model/rms_norm"]
    assert len(params) == 14
    assert all(p.layer in (None, 10) for p in params)


def test_config_from_dict_checks_fields():
    with pytest.raises(UsageError, match="missing field"):
        ModelConfig.from_dict({"emb_size": 64})
    with pytest.raises(UsageError, match="ffn_size"):
        ModelConfig.from_dict({**GROK1.to_dict(), "ffn_size": 100})
    assert ModelConfig.from_dict(GROK1.to_dict()) == GROK1
