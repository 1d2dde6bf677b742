"""vLLM 0.24's Grok loader accepts a repack's names and config (replayed from its source).

vLLM's wheel is a CUDA build: its model classes cannot be built on this machine.  So the
test runs vLLM's own code for what matters here, taken from the wheel (build_cache.py):
its config readers (_get_grok_version, _get_moe_intermediate_size, _get_moe_renormalize),
the class its GrokForCausalLM factory picks and that class's name remapping, its expert
mapping (RoutedExperts.make_expert_params_mapping) and Grok1Model.load_weights itself,
run over every name in the repack's index against the parameters vLLM's modules
register (qkv_proj, o_proj, gate, experts.w13/w2, four norms per layer).
"""

from __future__ import annotations

import ast
import json
import types
from pathlib import Path

import build_cache
import pytest

pytestmark = pytest.mark.consumers


@pytest.fixture(scope="module")
def vllm_src(cache) -> Path:
    return build_cache.vllm_source(cache)


def functions_from(path: Path, names: set[str], classes: set[str] = frozenset(),
                   env: dict | None = None) -> dict:
    """Exec the named top-level functions and classes of a source file (nothing else)."""
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body
            if (isinstance(n, ast.FunctionDef) and n.name in names)
            or (isinstance(n, ast.ClassDef) and n.name in classes)]
    ns: dict = dict(env or {})
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), ns)  # noqa: S102
    return ns


def method_source(path: Path, cls: str, method: str) -> ast.FunctionDef:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    return item
    raise LookupError(f"{cls}.{method} not in {path}")


def class_attrs(path: Path, cls: str) -> dict:
    """String class attributes and get_weight_name_remapping's returned dict."""
    out: dict = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant):
                    out[item.targets[0].id] = item.value.value
                if isinstance(item, ast.FunctionDef) and item.name == "get_weight_name_remapping":
                    ret = [s for s in ast.walk(item) if isinstance(s, ast.Return)][0]
                    out["remapping"] = ast.literal_eval(ret.value)
    return out


class Param:
    def __init__(self, name: str, calls: list):
        self.name = name
        self.calls = calls

    def weight_loader(self, param, weight, *args, **kwargs):
        self.calls.append((param.name, weight, args, kwargs))


def test_vllm_takes_the_grok_class_whose_names_are_ours(vllm_src, sglang_repacks):
    model_dir = sglang_repacks["bf16"]
    config = json.loads((model_dir / "config.json").read_text())
    hf = types.SimpleNamespace(**config)
    grok1 = vllm_src / "vllm/model_executor/models/grok1.py"
    registry = (vllm_src / "vllm/model_executor/models/registry.py").read_text()
    assert '"Grok1ForCausalLM": ("grok1", "GrokForCausalLM")' in registry
    readers = functions_from(grok1, {"_get_grok_version", "_get_moe_intermediate_size",
                                     "_get_moe_renormalize", "_get_num_experts"})
    version = readers["_get_grok_version"](hf)
    assert version == "grok2"  # moe_intermediate_size present: the class with w1/w2/w3 names
    assert readers["_get_moe_intermediate_size"](hf) == config["intermediate_size"]
    assert readers["_get_moe_renormalize"](hf) is False  # Grok-1 keeps the top-2 gates as is
    assert readers["_get_num_experts"](hf) == config["num_local_experts"]
    assert hf.hidden_size // hf.num_attention_heads == hf.head_dim  # vLLM derives head_dim so
    attrs = class_attrs(grok1, "Grok2ForCausalLM")

    # vLLM's expert mapping, from its source (EPLB off: physical expert = logical expert).
    routed = vllm_src / "vllm/model_executor/layers/fused_moe/routed_experts.py"
    make_mapping = method_source(routed, "RoutedExperts", "make_expert_params_mapping")
    make_mapping.decorator_list = []
    eplb = types.SimpleNamespace(build_initial_global_physical_to_logical_map=(
        lambda n, r: list(range(n + r))))
    ns = {"EplbState": eplb, "torch": types.SimpleNamespace(nn=types.SimpleNamespace(
        Module=object)), "Iterable": list}
    exec(compile(ast.Module(body=[make_mapping], type_ignores=[]), str(routed), "exec"), ns)

    # The parameters vLLM's Grok1Model registers, named as its modules name them.
    calls: list = []
    params = {}
    for layer in range(config["num_hidden_layers"]):
        p = f"layers.{layer}"
        for n in ("attn.qkv_proj.weight", "attn.o_proj.weight", "moe_block.gate.weight",
                  "moe_block.experts.routed_experts.w13_weight",
                  "moe_block.experts.routed_experts.w2_weight", "pre_attn_norm.weight",
                  "post_attn_norm.weight", "pre_moe_norm.weight", "post_moe_norm.weight"):
            params[f"{p}.{n}"] = Param(f"{p}.{n}", calls)
    params["embed_tokens.weight"] = Param("embed_tokens.weight", calls)
    params["norm.weight"] = Param("norm.weight", calls)
    model = types.SimpleNamespace(
        config=hf, weight_name_remapping=attrs["remapping"],
        named_parameters=lambda: list(params.items()),
        get_expert_mapping=lambda: ns["make_expert_params_mapping"](
            model, attrs["ckpt_gate_proj_name"], attrs["ckpt_down_proj_name"],
            attrs["ckpt_up_proj_name"], config["num_local_experts"]),
    )
    load = method_source(grok1, "Grok1Model", "load_weights")
    env = {"Iterable": list, "torch": types.SimpleNamespace(Tensor=object),
           "is_pp_missing_parameter": lambda name, m: False,
           "maybe_remap_kv_scale_name": lambda name, d: name,
           "default_weight_loader": None}
    exec(compile(ast.Module(body=[load], type_ignores=[]), str(grok1), "exec"), env)

    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    names = [n for n in index["weight_map"] if n != "lm_head.weight"]  # lm_head: its own module
    # AutoWeightsLoader hands Grok1Model the names below "model."
    loaded = env["load_weights"](model, [(n.removeprefix("model."), n) for n in names])
    assert loaded == set(params)  # all parameters written
    assert len(calls) == len(names)  # every name of ours went to a weight loader
    seen = {(c[0], c[2], tuple(sorted(c[3].items())) if c[3] else ()) for c in calls}
    assert len(seen) == len(calls)  # no name loaded twice into the same slot
    shards = {c[2][0] for c in calls if c[2] and c[0].endswith("qkv_proj.weight")}
    assert shards == {"q", "k", "v"}
    experts = {(c[3]["expert_id"], c[3]["shard_id"]) for c in calls if c[3]}
    assert experts == {(e, s) for e in range(config["num_local_experts"])
                       for s in ("w1", "w2", "w3")}
    for c in calls:  # the gate projection (w1) and up projection (w3) are ours, not swapped
        if c[3]:
            want = {"w1": ".w1.", "w2": ".w2.", "w3": ".w3."}[c[3]["shard_id"]]
            assert want in c[1], c
