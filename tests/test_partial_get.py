"""smoke and inspect on what `get --layers` fetched (issue 13, item 6).

A real seeder serves the 12-layer mini checkpoint; `get --layers` fetches part of it.
Later commands must find the model's config (the manifest the partial get kept), say
which layers are there, and never describe the part as a smaller, complete model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from lt_helpers import SeederProc, run_get

from grokfetch.cli import cli


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def seeder(source: Path):
    with SeederProc(source) as s:
        yield s


def partial(seeder: SeederProc, source: Path, dest: Path, layers: str) -> Path:
    g = run_get(seeder.magnet, "--dest", str(dest), "--manifest",
                str(source / "grokfetch-manifest.json"), "--layers", layers)
    assert g.proc.returncode == 0, g.stderr
    assert f"model config for later commands: {dest / '.grokfetch' / 'manifest.json'}" in \
        g.messages()
    return dest


def test_smoke_all_on_layers_0_1_is_not_a_2_layer_model(tmp_path, seeder, source):
    dest = partial(seeder, source, tmp_path / "part", "0-1")
    r = run("smoke", dest, "--all")
    assert r.exit_code == 3, r.output
    assert "the checkpoint holds only layers 0-1" in r.stderr
    assert "checks passed" not in r.output
    r = run("smoke", dest, "--layer", "1")
    assert r.exit_code == 0, r.output
    r = run("inspect", dest)
    assert r.exit_code == 1
    assert "12 layers" in r.stdout.splitlines()[0]
    assert "layers present: 0-1 of 0-11" in r.stdout


def test_smoke_a_single_fetched_layer_and_inspect_it(tmp_path, seeder, source):
    dest = partial(seeder, source, tmp_path / "part7", "7")
    r = run("smoke", dest, "--layer", "7")
    assert r.exit_code == 0, r.output
    r = run("inspect", dest)
    assert r.exit_code == 1 and "layers present: 7 of 0-11" in r.stdout
    # without the kept manifest and the partial pin: refused, never inferred from the part
    (dest / ".grokfetch" / "manifest.json").unlink()
    (dest / "grokfetch-manifest.json").unlink()
    r = run("inspect", dest)
    assert r.exit_code == 2
    assert "a partial checkpoint cannot describe its model; pass --config" in r.stderr
    # the manifest itself is a valid --config (its "config" block is used)
    r = run("smoke", dest, "--layer", "7", "--config", source / "grokfetch-manifest.json")
    assert r.exit_code == 0, r.output
