"""`get` against a folder attacked while it downloads, and its leftovers (issue 13, items 7, 14).

A real seeder on 127.0.0.1 serves the mini checkpoint slowly; mid-run, DEST/ckpt-0 is
swapped for a symlink to a folder outside DEST - what a local attacker (or a confused
script) does to redirect the remaining writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from lt_helpers import GetProc, SeederProc, run_get


def test_ckpt_folder_swapped_for_a_symlink_mid_run_stops_get(tmp_path: Path, source: Path):
    dest = tmp_path / "dl"
    outside = tmp_path / "outside"
    outside.mkdir()
    with SeederProc(source, "--max-upload-rate", "256K") as slow:
        with GetProc(slow.magnet, "--dest", str(dest), "--timeout", "60") as g:
            g.wait_for(lambda e: e.get("event") == "progress" and e["wanted_done"] > 0, 30,
                       "the first verified piece")
            os.rename(dest / "ckpt-0", dest / "ckpt-0.moved")
            os.symlink(outside, dest / "ckpt-0")
            rc = g.wait(30)
    assert rc == 2, g.stderr
    assert (f"Error: {dest / 'ckpt-0'}: became a symlink leading outside {dest} during the "
            "download; stopped before writing through it") in g.stderr
    assert g.snapshot()[-1]["event"] == "error"
    assert sorted(os.listdir(outside)) == []  # not a byte landed outside DEST


def test_a_rerun_after_a_half_written_resume_file_leaves_no_temp_file(tmp_path: Path,
                                                                       source: Path):
    """A disk that filled up while resume data was written left a 0-byte temp file."""
    dest = tmp_path / "dl"
    state = dest / ".grokfetch"
    state.mkdir(parents=True)
    stale = state / ".grokfetch-tmp-999-deadbeef-x.resume"
    stale.write_bytes(b"")
    with SeederProc(source) as s:
        g = run_get(s.magnet, "--dest", str(dest))
    assert g.proc.returncode == 0, g.stderr
    assert not [p.name for p in state.iterdir() if p.name.startswith(".grokfetch-tmp-")]
