"""Build (once) what the consumers tier runs: llama.cpp, its converter, SGLang, vLLM's source.

    python tests/consumers/build_cache.py [CACHE]

CACHE defaults to $GROKFETCH_CONSUMERS_CACHE or /work/cache/consumers.  The
versions come from versions.json beside this file (a bump is one line there).
Every step is skipped when its output exists, so a rerun takes seconds; the
first run builds llama.cpp (about 25 minutes on 2 cores) and fills three
venvs from PyPI.  Nothing here is part of grokfetch or its wheel.

- llama.cpp: the sources vendored in the llama-cpp-python sdist from PyPI,
  built with cmake (CPU only, Release, no curl), plus llama_harness.cpp
  compiled against its llama.h; the converter (convert_hf_to_gguf.py and
  gguf-py from the same sdist) gets a venv with CPU torch and its own pins.
- SGLang: a venv with CPU torch, sglang --no-deps and only the packages its
  model-loading path imports (sglang_load.py says what is stubbed instead).
- vLLM: its wheel, downloaded only to read its Grok loader's source (it is a
  CUDA build and cannot be installed here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS = json.loads((HERE / "versions.json").read_text())
DEFAULT_CACHE = "/work/cache/consumers"

# What SGLang's import of its Grok model and its loader needs, beyond torch; installed
# --no-deps so nothing pulls a CUDA torch.  Versions: sglang's own pins where it has them.
SGLANG_PACKAGES = [
    "numpy", "transformers", "tokenizers", "sentencepiece", "safetensors", "huggingface_hub",
    "hf-xet", "httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi",
    "pyyaml", "regex", "tqdm", "packaging", "filelock", "fsspec", "typer", "click",
    "shellingham", "rich", "markdown-it-py", "mdurl", "pygments", "typing-extensions",
    "psutil", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "requests",
    "urllib3", "charset-normalizer", "orjson", "pybase64", "triton", "pillow", "starlette",
    "msgspec", "pyzmq", "ipython", "aiohttp", "aiohappyeyeballs", "aiosignal", "attrs",
    "frozenlist", "multidict", "propcache", "yarl", "apache-tvm-ffi", "dill",
    "compressed-tensors", "gguf", "einops", "openai", "distro", "jiter", "httpx2",
    "partial_json_parser", "uvicorn", "fastapi", "annotated-doc", "opentelemetry-api",
    "importlib-metadata", "zipp", "loguru", "setproctitle", "xxhash", "zstandard",
    "scipy", "jinja2", "markupsafe", "decorator", "jedi", "parso", "traitlets",
    "prompt-toolkit", "wcwidth", "stack-data", "executing", "asttokens", "pure-eval",
    "pexpect", "ptyprocess", "matplotlib-inline", "ipython-pygments-lexers",
    "cuda-bindings", "cuda-pathfinder", "interegular", "blobfile",
]
CONVERTER_PACKAGES = ["numpy<2.3", "sentencepiece>=0.1.98,<0.3.0", "transformers==4.57.6",
                      "protobuf>=4.21.0,<5.0.0", "safetensors"]


def cache_dir(arg: str | None = None) -> Path:
    return Path(arg or os.environ.get("GROKFETCH_CONSUMERS_CACHE") or DEFAULT_CACHE)


def run(*cmd: object, cwd: Path | None = None) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(["nice", "-n", "10", *map(str, cmd)], check=True, cwd=cwd)


def venv(path: Path) -> Path:
    if not (path / "bin" / "python").exists():
        run(sys.executable, "-m", "venv", path)
    return path / "bin" / "python"


def pip(python: Path, *args: str) -> None:
    run(python, "-m", "pip", "install", "-q", *args)


# -- llama.cpp -------------------------------------------------------------------------


def llama_paths(cache: Path) -> dict[str, Path]:
    v = VERSIONS["llama-cpp-python"]
    src = cache / "src" / f"llama_cpp_python-{v}" / "vendor" / "llama.cpp"
    build = cache / "build" / f"llama.cpp-{v}"
    return {"src": src, "build": build, "harness": build / "llama_harness",
            "converter": src / "convert_hf_to_gguf.py",
            "python": cache / f"venv-llama.cpp-{v}" / "bin" / "python"}


def build_llama(cache: Path) -> dict[str, Path]:
    v = VERSIONS["llama-cpp-python"]
    p = llama_paths(cache)
    if not p["src"].is_dir():
        (cache / "src").mkdir(parents=True, exist_ok=True)
        sdist = cache / "src" / f"llama_cpp_python-{v}.tar.gz"
        if not sdist.exists():
            run(sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
                "--no-deps", f"llama-cpp-python=={v}", "-d", cache / "src")
        with tarfile.open(sdist) as tar:
            tar.extractall(cache / "src", filter="data")
    lib = p["build"] / "bin" / "libllama.so"
    if not lib.exists():
        run("cmake", "-S", p["src"], "-B", p["build"], "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_COMMON=OFF",
            "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=ON")
        run("cmake", "--build", p["build"], "--target", "llama", "-j", "2")
    harness_src = HERE / "llama_harness.cpp"
    if not p["harness"].exists() or p["harness"].stat().st_mtime < harness_src.stat().st_mtime:
        bindir = p["build"] / "bin"
        run("g++", "-O2", "-std=c++17", "-I", p["src"] / "include",
            "-I", p["src"] / "ggml" / "include", harness_src, "-L", bindir,
            "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{bindir}", "-o", p["harness"])
    python = p["python"]
    if not python.exists():
        venv(python.parent.parent)
        pip(python, f"torch=={VERSIONS['torch']}", *CONVERTER_PACKAGES)
        pip(python, str(p["src"] / "gguf-py"))
    return p


# -- SGLang ----------------------------------------------------------------------------


def sglang_python(cache: Path) -> Path:
    return cache / f"venv-sglang-{VERSIONS['sglang']}" / "bin" / "python"


def build_sglang(cache: Path) -> Path:
    python = sglang_python(cache)
    done = python.parent.parent / ".grokfetch-complete"
    if done.exists():
        return python
    venv(python.parent.parent)
    pip(python, f"torch=={VERSIONS['torch']}")  # CPU build on this machine's disk
    pip(python, "--no-deps", f"sglang=={VERSIONS['sglang']}")
    pins = _requires(python, "sglang")
    pip(python, "--no-deps", *[pins.get(_norm(n), n) for n in SGLANG_PACKAGES])
    done.write_text("ok\n")
    return python


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _requires(python: Path, dist: str) -> dict[str, str]:
    """{name: 'name==X'} for the exact pins in an installed distribution's metadata."""
    code = ("import importlib.metadata as m, json, sys; "
            f"print(json.dumps(m.requires({dist!r}) or []))")
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    pins = {}
    for req in json.loads(out.stdout):
        if ";" in req or "==" not in req:
            continue
        name = req.split("==")[0].split("[")[0].strip()
        if name.lower() in ("torch", "torchvision", "torchaudio"):
            continue  # the CPU torch on disk stays
        pins[_norm(name)] = req.replace(" ", "")
    return pins


# -- vLLM ------------------------------------------------------------------------------


def vllm_source(cache: Path) -> Path:
    """The Grok loader's source files, unpacked from the vLLM wheel."""
    v = VERSIONS["vllm"]
    out = cache / "src" / f"vllm-{v}-source"
    files = ["vllm/model_executor/models/grok1.py",
             "vllm/model_executor/layers/fused_moe/routed_experts.py",
             "vllm/model_executor/models/registry.py"]
    if all((out / f).exists() for f in files):
        return out
    (cache / "src").mkdir(parents=True, exist_ok=True)
    wheels = sorted((cache / "src").glob(f"vllm-{v}-*.whl"))
    if not wheels:
        run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"vllm=={v}",
            "-d", cache / "src")
        wheels = sorted((cache / "src").glob(f"vllm-{v}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        for f in files:
            z.extract(f, out)
    return out


def build_all(cache: Path) -> None:
    build_llama(cache)
    build_sglang(cache)
    vllm_source(cache)


if __name__ == "__main__":
    build_all(cache_dir(sys.argv[1] if len(sys.argv) > 1 else None))
