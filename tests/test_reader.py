"""The safe reader: exact arrays back, every hostile or broken file refused, nothing run."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import GOLDEN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grokfetch.errors import CheckpointFormatError
from grokfetch.format.checkpoint import inspect_checkpoint
from grokfetch.format.layout import param_list
from grokfetch.format.manifest import load_manifest
from grokfetch.format.pickle_reader import scan
from grokfetch.format.pickle_writer import ArrayData, write_param_file
from grokfetch.synth import param_arrays


def _materialise(spec, seed=0):
    out = {}
    for name, data in param_arrays(spec, seed).items():
        buf = io.BytesIO()
        data.payload().write(buf)
        out[name] = np.frombuffer(buf.getvalue(), dtype=data.dtype).reshape(data.shape)
    return out


def test_round_trip_every_file_of_a_synthesized_checkpoint(mini_ckpt):
    cfg = load_manifest(mini_ckpt / "grokfetch-manifest.json").config
    for spec in param_list(cfg):
        pf = scan(mini_ckpt / spec.file)
        assert pf.kind == spec.kind
        got = pf.load()
        want = _materialise(spec)
        assert set(got) == set(want) == {a.name for a in spec.arrays}
        for name in want:
            assert got[name].dtype == want[name].dtype
            np.testing.assert_array_equal(got[name], want[name])


def test_arrays_are_zero_copy_read_only_views(mini_ckpt):
    pf = scan(mini_ckpt / "ckpt-0" / "tensor00002_000")
    w = pf.open("weight")
    assert isinstance(w, np.memmap)
    assert not w.flags.writeable
    with pytest.raises(ValueError):
        w[0, 0, 0] = 1


def test_golden_files_named_without_manifest_or_config():
    layout = json.loads((GOLDEN / "layout.json").read_text())
    report = inspect_checkpoint(GOLDEN)  # no manifest there: config inferred
    assert report.ok and report.config_source == "inferred"
    assert len(report.files) == 146
    for fr, want in zip(report.files, layout["files"], strict=True):
        assert fr.spec.file == want["file"]
        assert fr.spec.module == want["module"]
        if want["kind"] == "ndarray":
            a = fr.found.arrays["array"]
            assert (a.dtype.name, list(a.shape)) == (want["dtype"], want["shape"])
        else:
            assert fr.found.kind == "quantized"
            w, s = fr.found.arrays["weight"], fr.found.arrays["scales"]
            assert (w.dtype.name, list(w.shape)) == (want["weight_dtype"], want["weight_shape"])
            assert (s.dtype.name, list(s.shape)) == (want["scales_dtype"], want["scales_shape"])


def test_scan_reads_only_the_framing(tmp_path):
    """A 1.6 GB-shaped file (sparse) scans in well under 0.1 s."""
    from grokfetch.format.layout import GROK1
    from grokfetch.synth import write_param

    spec = next(p for p in param_list(GROK1) if p.module.endswith("decoder_layer_0/moe/linear"))
    out = tmp_path / "big"
    write_param(out, spec, sparse=True)
    t = time.perf_counter()
    pf = scan(out)
    elapsed = time.perf_counter() - t
    assert pf.size == 1_611_137_347
    assert elapsed < 0.5  # generous for a loaded CI box; typical is ~0.1 ms


# -- hostile and broken input ---------------------------------------------------------


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def _written(kind: str, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    write_param_file(buf, kind, {k: ArrayData.of(v) for k, v in arrays.items()})
    return buf.getvalue()


def _valid_bytes() -> bytes:
    buf = io.BytesIO()
    w = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    import ml_dtypes
    s = np.ones((1, 4), dtype=ml_dtypes.bfloat16)
    write_param_file(buf, "quantized", {"weight": ArrayData.of(w), "scales": ArrayData.of(s)})
    return buf.getvalue()


def _hostile_corpus(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, expected message fragment)."""
    cmd = f"touch {marker}"
    corpus = {
        "os_system": (pickle.dumps(_Evil(os.system, cmd), protocol=4), "forbidden global"),
        "builtins_eval": (pickle.dumps(
            _Evil(eval, f"__import__('os').system({cmd!r})"), protocol=4), "forbidden global"),
        "not_a_pickle": (b"PK\x03\x04 this is a zip, not a pickle", "not a pickle"),
        "empty": (b"", "empty file"),
        "zero_dim": (_written("ndarray", array=np.array(3.0, dtype=np.float32)),
                     "0-dimensional"),
        "fortran": (pickle.dumps(np.asfortranarray(np.ones((3, 4), np.float32)), protocol=4),
                    "Fortran-order"),
    }
    valid = _valid_bytes()
    corpus["truncated_payload"] = (valid[:150], "truncated")
    # Lying length: the weight payload claims 15 bytes where shape [4, 4] int8 needs 16.
    i = valid.index(b"C\x10")  # SHORT_BINBYTES of 16 bytes
    lying = bytearray(valid[:i] + b"C\x0f" + valid[i + 2:i + 2 + 15] + valid[i + 2 + 16:])
    assert lying[2:3] == b"\x95"  # the one frame: shrink its length to match
    lying[3:11] = struct.pack("<Q", struct.unpack("<Q", lying[3:11])[0] - 1)
    lying = bytes(lying)
    corpus["lying_length"] = (lying, "payload is 15 bytes")
    return corpus


@pytest.mark.parametrize("name", ["os_system", "builtins_eval", "not_a_pickle", "empty",
                                  "zero_dim", "fortran", "truncated_payload", "lying_length"])
def test_hostile_files_are_refused_and_nothing_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    data, fragment = _hostile_corpus(marker)[name]
    path = tmp_path / "tensor00000_000"
    path.write_bytes(data)
    with pytest.raises(CheckpointFormatError) as e:
        scan(path)
    msg = str(e.value)
    assert str(path) in msg and "byte" in msg
    assert fragment in msg
    assert not marker.exists()


def test_the_hostile_payloads_are_live(tmp_path):
    """Proof the corpus is dangerous: plain pickle.load (in a subprocess) runs it."""
    marker = tmp_path / "pwned"
    data, _ = _hostile_corpus(marker)["os_system"]
    path = tmp_path / "evil"
    path.write_bytes(data)
    subprocess.run([sys.executable, "-c",
                    f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"], check=False)
    assert marker.exists()


def test_zero_filled_tail_is_reported_as_incomplete_download(tmp_path, mini_ckpt):
    src = (mini_ckpt / "ckpt-0" / "tensor00002_000").read_bytes()
    path = tmp_path / "tensor00002_000"
    path.write_bytes(src[:1000] + b"\0" * (len(src) - 1000))
    with pytest.raises(CheckpointFormatError, match="zero bytes from byte 1000 on"):
        scan(path)
    path.write_bytes(b"\0" * 5000)
    with pytest.raises(CheckpointFormatError, match="entirely zero bytes"):
        scan(path)


def test_big_endian_and_unknown_dtype_refused(tmp_path):
    path = tmp_path / "t"
    data = pickle.dumps(np.ones(3, dtype=">f4"), protocol=4)
    path.write_bytes(data)
    with pytest.raises(CheckpointFormatError, match="byte order"):
        scan(path)
    path.write_bytes(pickle.dumps(np.array(["a"]), protocol=4))
    with pytest.raises(CheckpointFormatError, match="dtype"):
        scan(path)


def test_trailing_garbage_refused(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(_valid_bytes() + b"extra")
    with pytest.raises(CheckpointFormatError, match="after the pickle's STOP"):
        scan(path)


_FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=300, **_FUZZ)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_the_documented_error(tmp_path, data):
    path = tmp_path / "fuzz"
    path.write_bytes(data)
    try:
        scan(path)
    except CheckpointFormatError:
        pass


@settings(max_examples=400, **_FUZZ)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                max_size=6), st.integers(0, 600))
def test_mutated_valid_files_only_raise_the_documented_error(tmp_path, flips, cut):
    data = bytearray(_valid_bytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut:
        data = data[:-cut] if cut < len(data) else data
    path = tmp_path / "fuzz"
    path.write_bytes(bytes(data))
    try:
        pf = scan(path)
    except CheckpointFormatError:
        return
    # If it parsed, everything it claims must lie inside the file.
    for a in pf.arrays.values():
        assert a.offset + a.nbytes <= pf.size
