"""The inspect and synth commands, their output and their exit codes."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner
from helpers import GOLDEN

from grokfetch.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("inspect", "synth"):
        assert cmd in r.output


def test_synth_then_inspect(tmp_path):
    r = run("synth", tmp_path / "x", "--layers", "12", "--quiet")
    assert r.exit_code == 0, r.output
    r = run("inspect", tmp_path / "x")
    assert r.exit_code == 0, r.output
    assert "transformer/decoder_layer_10/moe/linear/w" in r.output
    assert "146 files" in r.output and "OK" in r.output


def test_inspect_golden_json_names_files():
    r = run("inspect", GOLDEN / "ckpt-0", "--json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["ok"] and d["config_source"] == "inferred"
    assert d["files"][26]["param"] == "transformer/decoder_layer_10/moe/linear"
    assert d["files"][26]["arrays"][0]["shape"] == [8, 64, 344]


def test_inspect_one_file():
    r = run("inspect", GOLDEN / "ckpt-0" / "tensor00003_000")
    assert r.exit_code == 0
    assert "quantized" in r.output and "[8, 8, 64]" in r.output


def test_inspect_bad_file_one_line_exit_3(tmp_path):
    p = tmp_path / "tensor00000_000"
    p.write_bytes(b"\x80\x04\x95garbage")
    r = run("inspect", p)
    assert r.exit_code == 3
    assert r.stderr.startswith(f"Error: {p} at byte ")
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_inspect_folder_reports_missing_truncated_and_mismatched(copy_ckpt):
    root = copy_ckpt()
    ck = root / "ckpt-0"
    (ck / "tensor00005_000").unlink()
    data = (ck / "tensor00002_000").read_bytes()
    (ck / "tensor00002_000").write_bytes(data[: len(data) // 2])
    # a file in the wrong place: router weights where layer 0's rms_norm should be
    (ck / "tensor00009_000").write_bytes((ck / "tensor00013_000").read_bytes())
    r = run("inspect", root)
    assert r.exit_code == 3
    assert "MISSING: ckpt-0/tensor00005_000" in r.output
    assert "truncated" in r.output
    assert "expected float32 [128] for transformer/decoder_layer_0/rms_norm" in r.output


def test_inspect_missing_only_exits_1(copy_ckpt):
    root = copy_ckpt()
    (root / "ckpt-0" / "tensor00145_000").unlink()
    r = run("inspect", root)
    assert r.exit_code == 1
    assert "MISSING: ckpt-0/tensor00145_000" in r.output


def test_inspect_key_size_zero_is_a_usage_error_not_a_crash():
    # the head size is only used when the config is inferred (no manifest here)
    r = run("inspect", GOLDEN / "ckpt-0", "--key-size", "0")
    assert r.exit_code == 2, r.output
    assert r.stderr == f"Error: {GOLDEN / 'ckpt-0'}: key size 0: expected a positive head size\n"


def test_inspect_a_fifo_in_the_checkpoint_is_a_bad_file_not_a_hang(copy_ckpt):
    import os

    root = copy_ckpt()
    (root / "grokfetch-manifest.json").unlink()  # so the config is inferred from headers
    fifo = root / "ckpt-0/tensor00013_000"
    fifo.unlink()
    os.mkfifo(fifo)
    import threading

    got: list = []
    t = threading.Thread(target=lambda: got.append(run("inspect", root)), daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # release the blocked reader so the test process can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError("inspect blocked opening a FIFO")
    r = got[0]
    assert r.exit_code == 3
    assert r.stderr == f"Error: {fifo}: is a FIFO (named pipe), expected a checkpoint file\n"


def test_inspect_with_config_file(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text((GOLDEN / "layout.json").read_text())
    r = run("inspect", GOLDEN, "--config", cfg, "--json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["config_source"] == "explicit" and d["config"]["key_size"] == 16


def test_not_a_checkpoint_folder_exit_2(tmp_path):
    r = run("inspect", tmp_path)
    assert r.exit_code == 2
    assert "no checkpoint here" in r.stderr


def test_a_bad_config_file_is_named_in_the_error(tmp_path):
    for text, what in [("[1, 2]", "model config must be a JSON object, got list"),
                       ('{"vocab_size": 1}', "model config: missing field(s)"),
                       ("{", "cannot read config: not JSON")]:
        cfg = tmp_path / "my config.json"
        cfg.write_text(text)
        r = run("inspect", GOLDEN, "--config", cfg)
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith(f"Error: {cfg}: {what}"), r.stderr
    none = tmp_path / "none.json"
    r = run("inspect", GOLDEN, "--config", none)
    assert r.stderr == f"Error: {none}: cannot read config: No such file or directory\n"


def test_output_piped_into_head_stops_quietly_not_as_a_bug(mini_ckpt):
    # `grokfetch verify DIR | head`: the reader is gone before the first line is written
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "grokfetch", "verify", str(mini_ckpt)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(60) == 141, err
    assert "internal error" not in err and "Exception ignored" not in err


def test_inspect_through_a_symlink_to_ckpt_0_uses_the_pinned_manifest(mini_ckpt, tmp_path):
    link = tmp_path / "grok"
    link.symlink_to(mini_ckpt / "ckpt-0")
    r = run("inspect", link, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["config_source"] == "manifest"


def test_json_commands_print_an_error_document_on_exits_2_to_5(tmp_path, mini_ckpt,
                                                               monkeypatch):
    """A script reading --json output always gets a document (issue 13, item 17)."""
    from grokfetch.repack import run as repack_run

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cases = [(("verify", mini_ckpt, "--manifest", bad, "--json"), 2, "not valid JSON")]
    fifo = tmp_path / "tensor00000_000"
    os.mkfifo(fifo)
    cases.append((("inspect", fifo, "--json"), 3, "is a FIFO"))
    monkeypatch.setattr(repack_run, "free_space", lambda p: 1)
    cases.append((("repack", mini_ckpt, tmp_path / "out", "--json"), 5, "only 1 B free"))
    for args, code, words in cases:
        r = run(*args)
        assert r.exit_code == code, r.output
        doc = json.loads(r.stdout)
        assert doc["error"]["exit_code"] == code and words in doc["error"]["message"]
        assert r.stderr.startswith("Error: ")
