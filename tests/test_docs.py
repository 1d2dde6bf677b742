"""The README cannot rot: its commands are the ones CI and the tests run."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from grokfetch.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def setup_commands() -> list[str]:
    """The two set-up commands at the top of the README (first code block)."""
    block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_the_two_setup_commands():
    main_job, tests = setup_commands()
    assert main_job.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install .")
    assert "pytest" in tests and "[test]" in tests


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = setup_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_every_command_has_help_and_is_documented():
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        r = CliRunner().invoke(cli, [name, "--help"])
        assert r.exit_code == 0, name
        assert cmd.help and len(cmd.help) > 20, name
        assert f"`grokfetch {name}" in README, f"README does not document {name}"


def test_exit_codes_documented_match_the_code():
    from grokfetch import errors

    for const in ("EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "EXIT_BAD_CHECKPOINT",
                  "EXIT_TORRENT", "EXIT_DISK", "EXIT_UNPROVEN", "EXIT_SIGNATURE",
                  "EXIT_INTERRUPTED"):
        code = getattr(errors, const)
        assert re.search(rf"^\| {code} \|", README, re.M), const


def readme_commands() -> list[list[str]]:
    """Every `grokfetch ...` command in the README's sh blocks, after the set-up block."""
    import shlex

    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)[1:]
    cmds = []
    for block in blocks:
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("grokfetch "):
                cmds.append(shlex.split(line)[1:])
    return cmds


def test_readme_shows_every_command():
    shown = {c[0] for c in readme_commands()}
    assert {"get", "seed", "verify", "repack", "smoke"} <= shown


def test_every_readme_command_parses_and_the_offline_ones_run(tmp_path, monkeypatch):
    """Each README command is parsed by the real CLI (options and types checked);
    those that need no network run for real on a synthesized checkpoint named
    like the real one, in the README's order."""
    from grokfetch.format.metainfo import make_torrent
    from grokfetch.synth import synthesize

    monkeypatch.chdir(tmp_path)
    synthesize(tmp_path / "grok-1", "mini")
    make_torrent(tmp_path / "grok-1", out=tmp_path / "grok-1.torrent")
    from tests.oms_helpers import write_key_pair

    write_key_pair(tmp_path, "signing-key")  # what the README's openssl lines make
    runner = CliRunner()
    ran = []
    for args in readme_commands():
        name, rest = args[0], args[1:]
        cmd = cli.get_command(click.Context(cli), name)
        if name in ("get", "seed"):  # these need the public swarm or block: parse only
            with cmd.make_context(name, list(rest)) as ctx:
                assert ctx.params
            continue
        r = runner.invoke(cli, args)
        assert r.exit_code == 0, f"grokfetch {' '.join(args)}\n{r.output}"
        ran.append(name)
    assert {"verify", "repack", "smoke"} <= set(ran)


def test_every_pointer_into_the_format_doc_names_one_of_its_sections():
    """Code says where a fact is written down (docs/FORMAT.md, "Section"): it must be there."""
    doc = (ROOT / "docs" / "FORMAT.md").read_text()
    sections = [line[3:].strip() for line in doc.splitlines() if line.startswith("## ")]
    pointers = []
    for path in [*ROOT.glob("grokfetch/**/*.py"), *ROOT.glob("bench/*.py"), ROOT / "README.md"]:
        text = re.sub(r"\s*\n\s*(#\s*)?", " ", path.read_text())  # comments wrapped over lines
        pointers += [(path.name, name) for name in re.findall(r'docs/FORMAT\.md, "([^"]+)"', text)]
    assert len(pointers) >= 5
    for where, name in pointers:
        assert any(s.startswith(name) for s in sections), f"{where}: no section {name!r}"


def test_the_project_stands_alone():
    """Nothing the product or its tests read points outside the repository."""
    for path in [*ROOT.glob("grokfetch/**/*.py"), *ROOT.glob("bench/*.py"),
                 *ROOT.glob("tests/*.py"), ROOT / "README.md", *ROOT.glob("docs/*.md")]:
        text = path.read_text()
        for outside in ("GROK1" + "_FORMAT", "MIRROR" + "_FACTS", "../" + "shared"):
            assert outside not in text, f"{path.relative_to(ROOT)} cites {outside}"


def test_the_cluster_rehearsal_in_docs_runs_as_written(tmp_path):
    """docs/cluster.md's one-machine rehearsal: a seeder, three nodes, done markers."""
    import os
    import subprocess
    import sys

    doc = (ROOT / "docs" / "cluster.md").read_text()
    block = re.search(r"<!-- rehearsal -->\n```sh\n(.*?)```", doc, re.S).group(1)
    # `grokfetch` on PATH is this checkout, whatever else is installed
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "grokfetch"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m grokfetch "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), GROKFETCH_NO_PROGRESS="1")
    r = subprocess.run(["bash", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 of 3 nodes complete" in r.stdout  # the seeder's last line
