"""The click group every command hangs off, and the helpers commands share.

Commands live one per module beside this file (``inspect.py``, ``verify.py``,
...); each calls one library function and formats what comes back.  Errors
are not handled here: library code raises ``GrokfetchError`` subclasses and
``grokfetch.cli.main`` turns them into one ``Error: ...`` line and the
documented exit code.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import click

from grokfetch import __version__
from grokfetch.errors import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, GrokfetchError
from grokfetch.names import escape_text, shorten

# Command name -> the module that defines it.  Modules are imported only when
# their command runs (or help lists it), so `grokfetch verify` does not pay
# for importing libtorrent and the forward pass: start-up is part of the
# time a user waits.
COMMAND_MODULES = {
    "get": "grokfetch.cli.get",
    "seed": "grokfetch.cli.get",
    "verify": "grokfetch.cli.verify",
    "sign": "grokfetch.cli.sign",
    "repack": "grokfetch.cli.repack",
    "smoke": "grokfetch.cli.smoke",
    "inspect": "grokfetch.cli.inspect",
    "synth": "grokfetch.cli.synth",
    "demo": "grokfetch.cli.demo",
}


class GrokfetchGroup(click.Group):
    """Lazily loaded commands; the one place where library errors become an
    ``Error:`` line and an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(COMMAND_MODULES[cmd_name])  # registers via @cli.command
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        _json_errors["mode"] = None
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except GrokfetchError as e:
            if os.environ.get("GROKFETCH_DEBUG"):
                traceback.print_exc()
            _echo_json_error(e.exit_code, str(e))
            # names in messages come from hostile files: no control character reaches the tty
            click.echo(f"Error: {escape_text(str(e))}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            _echo_json_error(EXIT_INTERRUPTED, "interrupted")
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except BrokenPipeError:
            # stdout's reader went away (`grokfetch verify DIR | head`): stop quietly with
            # the status of a Unix tool killed by SIGPIPE, and keep the exit-time flush quiet.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except Exception as e:  # a bug: still one line, and a way to see more
            if os.environ.get("GROKFETCH_DEBUG"):
                traceback.print_exc()
            what = escape_text(shorten(str(e)))
            click.echo(f"Error: internal error ({type(e).__name__}: {what}); this is a bug in "
                       "grokfetch - rerun with GROKFETCH_DEBUG=1 for the traceback and report it",
                       err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=GrokfetchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grokfetch")
def cli() -> None:
    """Get the Grok-1 checkpoint onto disk, prove it is intact, make it loadable.

    \b
    Exit codes:
      0    success
      1    the command ran and found problems (verify, smoke)
      2    could not run: bad arguments, malformed manifest, unsafe path
      3    a checkpoint file failed the safe reader's checks
      4    torrent or network problem
      5    not enough disk space, disk full or I/O error
      6    an OMS signature does not hold (another key, altered, untrusted, malformed)
      70   internal error (a bug in grokfetch; GROKFETCH_DEBUG=1 shows the traceback)
      130  interrupted (Ctrl-C / SIGTERM); state was saved where it applies
      141  stdout was closed early (piped into head): the output stopped there

    Set GROKFETCH_DEBUG=1 to see a traceback instead of the one-line error.
    """


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C in every command: state saved where it applies, exit 130.

    (`kill`, systemd, Kubernetes and `timeout` send SIGTERM; without this the
    process would die with 143, no message and, for repack, no journal flush.)
    """

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. some test runners): nothing to do
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# How the running command wants an error reported on stdout besides the Error: line:
# "document" (--json: one JSON document) or "lines" (--json-progress: a last event).
_json_errors: dict[str, str | None] = {"mode": None}


def json_errors(mode: str | None) -> None:
    """Ask for errors as JSON on stdout too (``"document"`` or ``"lines"``; None: off).

    A script reading ``--json`` output then always gets a document, and a
    ``--json-progress`` stream always ends with an event saying how it ended.
    """
    _json_errors["mode"] = mode


def _echo_json_error(exit_code: int, message: str) -> None:
    mode = _json_errors["mode"]
    with contextlib.suppress(OSError, ValueError):
        if mode == "document":
            echo_json({"error": {"exit_code": exit_code, "message": message}})
        elif mode == "lines":
            click.echo(json.dumps({"event": "error", "exit_code": exit_code, "message": message}))
        sys.stdout.flush()


def echo_json(obj: Any) -> None:
    """Print one JSON document on stdout (the --json output of every command)."""
    click.echo(json.dumps(obj, indent=1, default=str))


def stderr(msg: str) -> None:
    click.echo(msg, file=sys.stderr)
