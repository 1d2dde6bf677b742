"""transformers reads a repack's config.json, but it has no Grok-1 model."""

from __future__ import annotations

import json
import subprocess

import build_cache
import pytest

pytestmark = pytest.mark.consumers

CODE = """
import json, sys, transformers
from transformers import AutoConfig, AutoModelForCausalLM
d = sys.argv[1]
config = AutoConfig.from_pretrained(d)
model, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True)
print(json.dumps({"version": transformers.__version__, "config": type(config).__name__,
                  "model": type(model).__name__, "head_dim": config.head_dim,
                  "unexpected": sorted(info["unexpected_keys"]),
                  "missing": sorted(info["missing_keys"])}))
"""


def test_transformers_reads_the_config_but_builds_a_mixtral_without_the_grok_norms(
        cache, sglang_repacks):
    llama = build_cache.build_llama(cache)  # the converter's venv has transformers
    r = subprocess.run([llama["python"], "-c", CODE, sglang_repacks["f32"]],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["config"] == "MixtralConfig" and got["head_dim"] == 16
    assert got["model"] == "MixtralForCausalLM"  # not Grok-1: no such model in transformers
    dropped = {k.split(".")[-2] for k in got["unexpected"]}
    assert {"pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm"} <= dropped
    assert got["missing"]  # Mixtral's own norms are left randomly initialised
    print(f"\n[consumers] transformers {got['version']}: {got['model']}, "
          f"{len(got['unexpected'])} names dropped, {len(got['missing'])} left random")
