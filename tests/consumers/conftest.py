"""The consumers tier: llama.cpp, SGLang and vLLM run on repacks of an official golden set.

    python -m pytest -m consumers tests/consumers

Deselected from the default run (pyproject addopts).  The first run builds
the cache (build_cache.py: llama.cpp takes about 25 minutes on 2 cores);
reruns take seconds to build.  GROKFETCH_CONSUMERS_CACHE names the cache
folder; GROKFETCH_CONSUMERS_GOLDEN another golden set (a folder like
tests/data/golden: ckpt-0/, layout.json, tokens.json, golden.npz).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_cache  # noqa: E402

from grokfetch.format.layout import ModelConfig  # noqa: E402
from grokfetch.repack.run import repack  # noqa: E402

GOLDEN = Path(os.environ.get("GROKFETCH_CONSUMERS_GOLDEN") or HERE.parent / "data" / "golden")


@pytest.fixture(scope="session")
def cache() -> Path:
    return build_cache.cache_dir()


@pytest.fixture(scope="session")
def golden() -> dict:
    return {
        "root": GOLDEN,
        "config": ModelConfig.from_dict(json.loads((GOLDEN / "layout.json").read_text())),
        "tokens": json.loads((GOLDEN / "tokens.json").read_text()),
        "ref": dict(np.load(GOLDEN / "golden.npz")),
    }


@pytest.fixture(scope="session")
def sglang_repacks(tmp_path_factory, golden) -> dict[str, Path]:
    """The golden checkpoint repacked --layout sglang, in f32 and bf16."""
    base = tmp_path_factory.mktemp("sglang-repacks")
    return {dtype: repack(golden["root"], base / dtype, layout="sglang", dtype=dtype,
                          config=golden["config"], jobs=1).dest
            for dtype in ("f32", "bf16")}
