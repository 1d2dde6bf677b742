"""A cluster in miniature: one seeder, four leechers started together, all on 127.0.0.1.

This is how a GPU cluster spreads the weights: one node runs `grokfetch seed`,
the others `grokfetch get --peer SEEDER` and trade pieces among themselves
(they find each other through the seeder's peer exchange).  With the seeder's
upload capped, it must send clearly less than four copies.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lt_helpers import GetProc, SeederProc, tree_bytes

from grokfetch.format.manifest import load_manifest
from grokfetch.format.metainfo import make_torrent

LEECHERS = 4


@pytest.mark.slow
def test_four_leechers_share_instead_of_draining_the_seeder(tmp_path: Path, mini_ckpt: Path):
    source = tmp_path / "src"
    shutil.copytree(mini_ckpt, source)
    make_torrent(source, piece_size=16 * 1024)
    total = load_manifest(source / "grokfetch-manifest.json").total_size
    with SeederProc(source, "--max-upload-rate", "3M") as seeder:
        leechers = [
            GetProc(seeder.bare_magnet, "--peer", seeder.peer, "--dest", str(tmp_path / f"n{i}"),
                    "--manifest", str(source / "grokfetch-manifest.json"), "--timeout", "90")
            for i in range(LEECHERS)
        ]
        try:
            for g in leechers:
                assert g.wait(120) == 0, g.stderr
        finally:
            for g in leechers:
                g.kill()
        status = seeder.stop()
    want = tree_bytes(source / "ckpt-0")
    for i in range(LEECHERS):
        assert tree_bytes(tmp_path / f"n{i}" / "ckpt-0") == want
    shared = sum(g.result()["uploaded"] for g in leechers)
    factor = status["uploaded"] / total
    print(f"\nswarm: seeder uploaded {factor:.2f}x the data for {LEECHERS} leechers; "
          f"leechers uploaded {shared / total:.2f}x among themselves")
    assert shared > 0
    assert factor < LEECHERS - 0.5
