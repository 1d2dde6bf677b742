"""``grokfetch synth`` and the folder it writes into: a new one, or an earlier synth's."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from grokfetch.cli import cli
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest
from grokfetch.repack.run import repack
from grokfetch.synth import synthesize


def run(*args: object):
    return CliRunner().invoke(cli, ["synth", *map(str, args)])


def test_a_smaller_synth_over_an_earlier_one_leaves_no_stale_files(tmp_path):
    dest = tmp_path / "ck"
    synthesize(dest, "mini", num_layers=3)
    (dest / "ckpt-0" / ".grokfetch-tmp-1-ab-tensor00001_000").write_bytes(b"x")  # a killed run's
    r = run(dest, "--layers", "1", "--quiet")
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (dest / "ckpt-0").iterdir())
    assert files == [f"tensor{i:05d}_000" for i in range(14)]  # 2 + 12 x 1 layer, no leftovers
    assert len(load_manifest(dest / MANIFEST_NAME).files) == 14


def test_a_folder_holding_anything_else_is_refused_untouched(tmp_path, mini_ckpt):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("mine")
    r = run(notes, "--layers", "1")
    assert r.exit_code == 2
    assert f"Error: {notes}: is not empty (holds readme.txt); synth writes into a new or empty" \
           in r.stderr
    assert [p.name for p in notes.iterdir()] == ["readme.txt"]

    # A repack (or a real download) must never be overwritten with random weights.
    rp = repack(mini_ckpt, tmp_path / "rp", layers="0")
    before = sorted(p.name for p in rp.dest.rglob("*"))
    r = run(rp.dest, "--layers", "1")
    assert r.exit_code == 2
    assert "not a synthetic checkpoint" in r.stderr
    assert sorted(p.name for p in rp.dest.rglob("*")) == before


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10**9))
    r = run(tmp_path / "big", "--preset", "grok-1", "--layers", "1")
    assert r.exit_code == 5
    assert "a synthetic grok-1 checkpoint with 1 layer needs 8.1 GB, only 1.0 GB free" in r.stderr
    assert not (tmp_path / "big").exists()


def test_a_dest_that_cannot_be_created_is_one_line_not_an_internal_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    r = run(tmp_path / "a-file" / "ck", "--layers", "1")
    assert r.exit_code == 2
    assert r.stderr == f"Error: {tmp_path / 'a-file' / 'ck'}: cannot create the folder " \
                       "(Not a directory)\n"


def test_a_negative_seed_is_a_usage_error(tmp_path):
    from grokfetch.errors import UsageError

    r = run(tmp_path / "ck", "--seed", "-1")
    assert r.exit_code == 2 and "-1 is not in the range x>=0" in r.stderr
    with pytest.raises(UsageError, match="--seed -1: want a non-negative integer"):
        synthesize(tmp_path / "ck", num_layers=1, seed=-1)
    assert not (tmp_path / "ck").exists()


def test_a_rerun_after_an_interrupted_synth_replaces_it(tmp_path, monkeypatch):
    from grokfetch import synth

    real = synth.write_param
    written = []

    def write_then_stop(path, *args, **kw):
        if len(written) == 20:
            raise KeyboardInterrupt
        written.append(path)
        return real(path, *args, **kw)

    monkeypatch.setattr(synth, "write_param", write_then_stop)
    dest = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        synthesize(dest, "mini", num_layers=2)
    monkeypatch.setattr(synth, "write_param", real)
    r = run(dest, "--layers", "1", "--quiet")  # the folder is recognisably synth's
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (dest / "ckpt-0").iterdir())
    assert files == [f"tensor{i:05d}_000" for i in range(14)]  # the interrupted run's extras gone
