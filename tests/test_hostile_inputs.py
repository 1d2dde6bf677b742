"""The hostile-input corpus, grown by issue 13: deep nesting, huge counts, NaN and zero
in configs, FIFOs and devices named like tensor files, files that shrink while they are
read, and names full of escape sequences (items 8-12, 15, 16).

Each case is staged as an attacker would stage it - a crafted file dropped into an
otherwise good checkpoint folder - and run through the commands a user runs on it.
The rule they all check: one line naming the file, the documented exit code, never an
internal error (70), never a hang, and the other files still get their verdicts.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import by_path

from grokfetch.cli import cli
from grokfetch.format.manifest import load_manifest
from grokfetch.integrity.verify import verify

ESC = "\x1b"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, code: int) -> str:
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr[:2000]
    assert ESC not in r.stderr and len(lines[0]) < 1000
    return lines[0]


def nested_tuples(n: int) -> bytes:
    return b"\x80\x04N" + b"\x85" * n + b"."  # ((((None,),),),...)


def huge_dict(n: int) -> bytes:
    keys = b"".join(b"\x8c" + bytes([len(k)]) + k + b"Ns"
                    for k in (f"k{i}".encode() for i in range(n)))
    return b"\x80\x04}" + keys + b"."


def escaped_global() -> bytes:
    mod, name = f"x{ESC}[2J{ESC}[H".encode(), b"system"
    return (b"\x80\x04\x8c" + bytes([len(mod)]) + mod + b"\x8c" + bytes([len(name)]) + name
            + b"\x93.")


@pytest.fixture
def ckpt(copy_ckpt) -> Path:
    return copy_ckpt()


# -- items 9, 10: the reader is bounded -------------------------------------------------


@pytest.mark.parametrize("case, data, words", [
    ("200,000 nested tuples", nested_tuples(200_000), "nested more than 8 deep"),
    ("a 200,000-key dict", huge_dict(200_000), "dict of more than 64 keys"),
    ("a global named with escape sequences", escaped_global(),
     "forbidden global x\\x1b[2J\\x1b[H.system"),
])
def test_a_hostile_file_in_a_folder_is_one_verdict_among_the_others(ckpt, case, data, words):
    bad = ckpt / "ckpt-0" / "tensor00003_000"
    bad.write_bytes(data)
    r = run("inspect", ckpt)
    assert r.exit_code == 3, r.output
    rows = [x for x in r.stdout.splitlines() if x[:5].strip().isdigit()]
    assert len(rows) == 146  # every other file still listed
    assert words in next(x for x in rows if x.split()[0] == "3")
    assert ESC not in r.output
    r = run("verify", ckpt)
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert sum(x.endswith(": OK (blake3)") for x in lines) == 145
    assert any(x.startswith("ckpt-0/tensor00003_000: FAILED") for x in lines)
    r = run("inspect", bad)
    line = one_line_error(r, 3)
    assert f"{bad} at byte " in line and words in line


def test_a_refused_dict_error_stays_short(tmp_path):
    p = tmp_path / "tensor00000_000"
    p.write_bytes(b"\x80\x04\x8c\x08__main__\x8c\x13QuantizedWeight8bit\x93)\x81}"
                  + huge_dict(60)[3:-1] + b"b.")  # 60 fields: allowed count, wrong names
    line = one_line_error(run("inspect", p), 3)
    assert "QuantizedWeight8bit fields" in line and len(line) < 600


# -- items 9, 10, 15: every config source goes through one validator --------------------


@pytest.mark.parametrize("field, value, words", [
    ("attn_logit_softcap", 0, "attn_logit_softcap must be a finite number > 0"),
    ("rms_norm_eps", -1, "rms_norm_eps must be a finite number > 0"),
    ("rms_norm_eps", float("nan"), "rms_norm_eps must be a finite number > 0, got nan"),
    ("rope_base", float("inf"), "rope_base must be a finite number > 0, got inf"),
    ("emb_size", 0, "emb_size must be a positive integer"),
    ("sequence_len", "x", "sequence_len must be a positive integer up to"),
    ("pad_token", [1], "pad_token must be a non-negative integer"),
    ("num_layers", 10_000_000, "num_layers must be a positive integer up to 4,096"),
    ("widening_factor", "8", "widening_factor must be a number, got '8'"),
])
def test_a_bad_config_is_refused_from_every_source(ckpt, tmp_path, field, value, words):
    cfg = load_manifest(ckpt / "grokfetch-manifest.json").config.to_dict()
    cfg[field] = value
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg))  # json writes NaN / Infinity, as a hostile file may
    assert words in one_line_error(run("inspect", ckpt, "--config", cfg_file), 2)
    assert words in one_line_error(run("smoke", ckpt, "--config", cfg_file), 2)
    # the same config inside the folder's own manifest
    m = json.loads((ckpt / "grokfetch-manifest.json").read_text())
    m["config"][field] = value
    (ckpt / "grokfetch-manifest.json").write_text(json.dumps(m))
    for cmd in (("verify", ckpt), ("inspect", ckpt), ("smoke", ckpt, "--layer", "0")):
        assert words in one_line_error(run(*cmd), 2), cmd


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_malformed_json_everywhere(ckpt, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(deep_json())
    assert "nested too deeply" in one_line_error(run("verify", ckpt, "--manifest", deep), 2)
    assert "nested too deeply" in one_line_error(run("inspect", ckpt, "--config", deep), 2)
    (ckpt / "grokfetch-manifest.json").write_text(deep_json())
    assert "nested too deeply" in one_line_error(run("verify", ckpt), 2)


def test_deep_json_in_a_safetensors_header_and_an_sglang_index(mini_ckpt, tmp_path):
    st = tmp_path / "st"
    assert run("repack", mini_ckpt, st, "--quiet").exit_code == 0
    victim = st / "language_model.in_out_embed.safetensors"
    head = deep_json(50_000).encode()
    victim.write_bytes(len(head).to_bytes(8, "little") + head)
    line = one_line_error(run("smoke", st, "--layer", "0"), 3)
    assert f"{victim} at byte 8: safetensors header is not JSON" in line
    hf = tmp_path / "hf"
    assert run("repack", mini_ckpt, hf, "--layout", "sglang", "--quiet").exit_code == 0
    index = hf / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["model.norm.weight"] = 5
    index.write_text(json.dumps(doc))
    line = one_line_error(run("smoke", hf, "--layer", "0"), 2)  # was "unsafe path 5: empty"
    assert "weight_map['model.norm.weight'] is int, expected a shard file name" in line
    index.write_text(deep_json())
    assert "cannot read JSON" in one_line_error(run("smoke", hf, "--layer", "0"), 2)


def test_an_npy_header_claiming_a_huge_array_is_refused_before_allocating(ckpt, tmp_path):
    emb = load_manifest(ckpt / "grokfetch-manifest.json").config.emb_size
    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**9, emb)})
        f.write(b"\0" * 64)
    line = one_line_error(run("smoke", ckpt, "--layer", "0", "--input", huge), 2)
    assert f"header says (1000000000, {emb})" in line
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}\n")
    assert "not a .npy array" in one_line_error(
        run("smoke", ckpt, "--layer", "0", "--input", garbage), 2)


# -- items 11, 16: FIFOs and devices named like tensor files ----------------------------


def _with_deadline(fn, seconds: float = 30.0):
    got: list = []
    t = threading.Thread(target=lambda: got.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    return got


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_fifo_or_device_named_like_a_tensor_file_is_refused_by_every_command(
        ckpt, tmp_path, kind):
    bad = ckpt / "ckpt-0" / "tensor00005_000"
    bad.unlink()
    if kind == "fifo":
        os.mkfifo(bad)
        words = "is a FIFO (named pipe)"
    else:
        bad.symlink_to("/dev/zero")
        words = "is a character device"
    try:
        for cmd, code in ((("repack", ckpt, tmp_path / "out"), 3),
                          (("smoke", ckpt, "--layer", "0"), 3), (("inspect", bad), 3)):
            got = _with_deadline(lambda cmd=cmd: run(*cmd))
            assert got, f"{cmd[0]} blocked on the {kind}"
            line = one_line_error(got[0], code)
            assert f"{bad}: {words}" in line and "missing" not in line and "empty" not in line
        got = _with_deadline(lambda: run("verify", ckpt))
        assert got and got[0].exit_code == 1
        assert "ckpt-0/tensor00005_000: UNREADABLE (not a regular file)" in got[0].stdout
    finally:
        if kind == "fifo" and not got:  # release a blocked reader so the session can end
            os.close(os.open(bad, os.O_WRONLY | os.O_NONBLOCK))


# -- item 12: names are escaped wherever they are printed -------------------------------


def test_file_names_cannot_clear_the_screen_or_forge_a_verdict(ckpt):
    (ckpt / f"x{ESC}[2J{ESC}[H{ESC}[32mckpt-0 all 770 files OK").write_bytes(b"a")
    (ckpt / "x\nforged.safetensors: OK (blake3)").write_bytes(b"b")
    r = run("verify", ckpt, "--strict")
    assert r.exit_code == 1  # two extra files, and no line says otherwise
    assert ESC not in r.output
    lines = r.stdout.splitlines()
    assert "forged.safetensors: OK (blake3)" not in lines
    assert "\\x\\nforged.safetensors: OK (blake3): EXTRA (not in the file list)" in lines
    assert ("\\x\\x1b[2J\\x1b[H\\x1b[32mckpt-0 all 770 files OK: EXTRA (not in the file list)"
            in lines)
    doc = json.loads(run("verify", ckpt, "--json").stdout)  # JSON keeps the real names
    assert "x\nforged.safetensors: OK (blake3)" in {f["path"] for f in doc["files"]}


# -- item 8: a file that shrinks while it is read ---------------------------------------


def pinned_folder(folder: Path, files: dict[str, bytes]) -> None:
    """A folder of plain files with a pinned BLAKE3 manifest (what verify checks them by)."""
    from grokfetch.format.manifest import FileEntry, Manifest
    from grokfetch.hashing import file_digests
    from grokfetch.integrity.verify import pin

    folder.mkdir()
    entries = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        d = file_digests(folder / name)
        entries.append(FileEntry(path=name, size=len(data), blake3=d.blake3, chunks=d.chunks))
    pin(folder, manifest=Manifest(name="data", files=entries))  # proven against it, pinned
    assert run("verify", folder).exit_code == 0


def _truncate_later(path: Path, size: int) -> subprocess.Popen:
    """Another program truncating ``path``, returned once it is blocked on our read lease.

    The kernel sends the lease holder its break before it puts the truncating process to
    sleep in ``__break_lease``, so from then on the reader has been told.  (A fixed sleep
    raced a loaded machine's Python start-up.)
    """
    p = subprocess.Popen([sys.executable, "-c", f"import os; os.truncate({str(path)!r}, {size})"])
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if "break_lease" in Path(f"/proc/{p.pid}/wchan").read_text():
                return p
        time.sleep(0.005)
    raise AssertionError(f"the truncate of {path} never waited on a lease (exit {p.poll()})")


def test_a_file_shrinking_under_verify_is_one_result_not_sigbus(tmp_path):
    folder = tmp_path / "data"
    # several 16 MiB windows: read through mmap
    pinned_folder(folder, {"big.bin": os.urandom(40 << 20), "small.bin": b"small"})
    big = folder / "big.bin"
    procs: list[subprocess.Popen] = []

    class Bar:  # hashing reports each block here: the moment to strike, mid-file
        def update(self, n: int) -> None:
            if not procs:
                procs.append(_truncate_later(big, 1000))

        def close(self) -> None:
            pass

    report = verify(folder, progress=lambda total, desc: Bar(), jobs=1)
    procs[0].wait(30)
    got = by_path(report)
    assert got["small.bin"].status == "OK"
    assert got["big.bin"].line() == (
        "big.bin: UNREADABLE (changed while being read (truncated or opened for writing by "
        "another program); check it again when it is left alone)")
    assert big.stat().st_size == 1000  # the other program got its way, after us


def test_verify_survives_a_file_truncated_at_random_moments(tmp_path):
    """The issue's 9 timings, with real processes: no SIGBUS (exit 135) in any."""
    folder = tmp_path / "data"
    content = os.urandom(48 << 20)
    pinned_folder(folder, {"big.bin": content})
    big = folder / "big.bin"
    env = dict(os.environ, GROKFETCH_NO_PROGRESS="1")
    for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5):
        big.write_bytes(content)
        p = subprocess.Popen([sys.executable, "-m", "grokfetch", "verify", str(folder)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(delay)
        os.truncate(big, 4096)
        out, err = p.communicate(timeout=60)
        assert p.returncode in (0, 1), (delay, p.returncode, err)
        assert "Traceback" not in err and "internal error" not in err
        if p.returncode == 1:
            assert "big.bin: " in out


def test_a_source_shrinking_under_a_dequantizing_repack_stops_it(tmp_path):
    from grokfetch.format.safetensors import _Mapped
    from grokfetch.readguard import FileChangedError

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(4 << 20))
    m = _Mapped(src)
    try:
        p = _truncate_later(src, 10)
        with pytest.raises(FileChangedError, match="changed while being read"):
            m.release()  # after each block: the next one is never touched
    finally:
        m.close()
    p.wait(30)
    assert src.stat().st_size == 10


# -- item 9: a full or read-only disk under verify --pin --------------------------------


def test_verify_pin_on_a_full_disk_is_exit_5(ckpt, monkeypatch):
    import errno

    from grokfetch.format import manifest

    (ckpt / "grokfetch-manifest.json").unlink()
    real = manifest.atomic_write_bytes

    def full(path, data):  # the disk that has no room for the manifest
        if str(path).endswith("grokfetch-manifest.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(manifest, "atomic_write_bytes", full)
    r = run("verify", ckpt, "--pin", "--trust-on-first-use", "--quiet")
    line = one_line_error(r, 5)
    assert "grokfetch-manifest.json: cannot write the manifest (No space left on device)" in line
