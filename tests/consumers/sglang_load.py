"""Build SGLang's own Grok1ForCausalLM on the CPU from a repack and dump its parameters.

Run with the SGLang venv's python (never imported by grokfetch's tests):

    python sglang_load.py MODEL_DIR OUT_DIR TP [DTYPE]

Spawns TP processes joined by gloo on 127.0.0.1; each publishes SGLang's
ServerArgs, builds SGLang's ModelConfig from MODEL_DIR/config.json, brings up
SGLang's parallel runtime and loads the model with SGLang's DefaultModelLoader
(its weight-file discovery and Grok1ForCausalLM.load_weights).  Each rank
writes OUT_DIR/rank<R>.safetensors (every parameter, as loaded) and
OUT_DIR/rank<R>.json (the config values SGLang resolved, the parameter and
loaded-weight names).  The forward pass needs a GPU and is not run.

Left out or stubbed because they need a GPU or are unused by a text model:
- torchvision (multimodal image preprocessing, imported by SGLang's multimodal
  configs): an empty stand-in module, and transformers is told it is absent;
- vllm._custom_ops (the CUDA rotary-embedding kernel SGLang's RotaryEmbedding
  keeps as its fallback for the forward pass on a device it has no kernel for):
  an empty stand-in, never called because no forward runs.
SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1) is not used: it needs sgl-kernel
built for the CPU from source.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import socket
import sys
import types


class _Anything:
    """Any attribute, call or base class: what an unused import needs to succeed."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> _Anything:
        return _Anything(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs) -> _Anything:
        return _Anything(f"{self._name}()")

    def __mro_entries__(self, bases):
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Anything(f"{self.__name__}.{attr}")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def install_stubs() -> None:
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()  # cached False: transformers leaves vision alone
    sys.meta_path.insert(0, _StubFinder({"torchvision", "vllm"}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, model_dir: str, out_dir: str, tp: int, dtype: str, port: int) -> None:
    install_stubs()
    import torch
    from safetensors.torch import save_file
    from sglang.srt.configs.device_config import DeviceConfig
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.distributed import bootstrap
    from sglang.srt.model_loader import get_model
    from sglang.srt.runtime_context import SpawnRanks, publish
    from sglang.srt.server_args import ServerArgs

    torch.set_num_threads(1)
    server_args = ServerArgs(model_path=model_dir, device="cpu", tp_size=tp, dtype=dtype,
                             host="127.0.0.1", skip_server_warmup=True)
    publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=rank, gpu_id=0))
    model_config = ModelConfig.from_server_args(server_args)
    bootstrap.init_parallel_runtime(server_args=server_args, device="cpu", dist_port=port)
    bootstrap.init_layer_runtime(model_config=model_config)
    model = get_model(model_config=model_config, load_config=LoadConfig(load_format="auto"),
                      device_config=DeviceConfig("cpu"))
    params = {n: p.detach().contiguous().clone() for n, p in model.named_parameters()}
    save_file(params, os.path.join(out_dir, f"rank{rank}.safetensors"))
    hf = model_config.hf_config
    resolved = {
        "architecture": type(model).__name__,
        "dtype": str(model_config.dtype),
        "head_dim": model_config.head_dim,
        "num_attention_heads": hf.num_attention_heads,
        "attn_scaling": model.model.layers[0].self_attn.scaling,
        "moe_intermediate_size": getattr(hf, "moe_intermediate_size", None),
        "load_presharded_moe": model.load_presharded_moe,
        "loaded_names": sorted(model.loaded_param_names),
        "params": {n: list(p.shape) for n, p in params.items()},
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(resolved, f, indent=1)


def main() -> None:
    model_dir, out_dir, tp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dtype = sys.argv[4] if len(sys.argv) > 4 else "auto"
    os.makedirs(out_dir, exist_ok=True)
    # One core per rank: SGLang binds each CPU rank's threads to a NUMA node unless told.
    ncpu = os.cpu_count() or 1
    os.environ.setdefault("SGLANG_CPU_OMP_THREADS_BIND",
                          "|".join(str(r % ncpu) for r in range(tp)))
    import torch.multiprocessing as mp

    port = free_port()
    mp.start_processes(rank_main, args=(model_dir, out_dir, tp, dtype, port), nprocs=tp,
                       start_method="spawn", join=True)


if __name__ == "__main__":
    main()
