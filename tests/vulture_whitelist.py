"""What the dead-code check (vulture, tests/test_lint.py) cannot see used.

Each name here is used by something vulture does not read: click calls the
commands its decorators registered, and the group's overrides; Python calls
signal handlers and ``__exit__`` with arguments they ignore; results reach
``--json`` through ``dataclasses.asdict``; config fields reach config.json and
manifests the same way; ``EXIT_OK`` is a documented exit code; ``Matrix`` is
the protocol the forward pass documents for lazily read weights; libtorrent reads
the fields set on its ``add_torrent_params``.
"""

from typing import Any

from grokfetch.cli.base import GrokfetchGroup
from grokfetch.cli.demo import demo_cmd
from grokfetch.cli.get import get_cmd, seed_cmd
from grokfetch.cli.inspect import inspect_cmd
from grokfetch.cli.repack import repack_cmd
from grokfetch.cli.sign import sign_cmd
from grokfetch.cli.smoke import smoke_cmd
from grokfetch.cli.synth import synth_cmd
from grokfetch.cli.verify import verify_cmd
from grokfetch.errors import EXIT_OK
from grokfetch.model.forward import Matrix

_: Any = None

click_callbacks = (demo_cmd, get_cmd, seed_cmd, inspect_cmd, repack_cmd, sign_cmd, smoke_cmd,
                   synth_cmd, verify_cmd, GrokfetchGroup.list_commands,
                   GrokfetchGroup.get_command)
ignored_arguments = (_.signum, _.exc)  # handler(signum, frame); __exit__(*exc)
asdict_fields = (_.download_rate, _.uploaded_to, _.failed_bytes, _.rechecked, _.pad_token,
                 _.eos_token)
documented = (EXIT_OK, Matrix)
libtorrent_params = (_.renamed_files,)  # add_torrent_params: read by libtorrent
