"""One lint command, strict over the whole package (cli included): ruff, mypy, the
import contracts of pyproject.toml (the allowed import directions) and the dead-code
check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean():
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_imports_go_the_allowed_directions():
    r = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import "
                        "lint_imports_command; sys.exit(lint_imports_command())"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_no_dead_code_in_the_package():
    """vulture reads the package, the tests and the benches; a function, class, method or
    attribute under grokfetch/ that none of them uses is dead (tests/vulture_whitelist.py
    names what only click, signal handlers, __exit__ or dataclasses.asdict use)."""
    r = subprocess.run([sys.executable, "-m", "vulture"], cwd=ROOT, capture_output=True,
                       text=True)
    dead = [line for line in r.stdout.splitlines() if line.startswith("grokfetch/")]
    assert not dead, "\n".join(dead)
    assert r.returncode in (0, 3), r.stderr  # 3: unused code found (in tests/ or bench/)
