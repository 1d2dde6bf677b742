"""Pushing one checkpoint to a fleet: what the seeder shows, and what an orchestrator waits on.

`seed --until-complete N` exits 0 once N distinct nodes have been seen with every
piece (exit 4 if --seed-timeout comes first); `get --seed-while-needed` keeps a
finished node serving while a connected peer still lacks pieces, then exits by
itself; a finished get leaves DEST/.grokfetch/done.json for a readiness probe.
All real libtorrent sessions on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from helpers import flip_byte
from lt_helpers import GetProc, JsonProc, SeederProc, grokfetch_cmd, run_get, tree_bytes

from grokfetch.fetch.fleet import Fleet, PeerView
from grokfetch.fetch.torrent import done_marker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peer(pid: str, progress: float) -> PeerView:
    return PeerView(pid, "127.0.0.1:1", progress, progress >= 1.0, 0, 0, 0, "test")


def test_a_node_seen_complete_stays_counted_after_it_leaves():
    fleet = Fleet()
    assert fleet.observe([_peer("aa", 0.5), _peer("bb", 1.0)]).complete == 1
    view = fleet.observe([_peer("aa", 1.0)])  # bb finished and left; aa finished now
    assert (view.connected, view.complete, view.seen, view.needing) == (1, 2, 2, 0)
    assert fleet.observe([]).complete == 2
    # a connection whose handshake has not given a peer id yet is nobody
    assert fleet.observe([_peer("00" * 20, 0.0)]).connected == 0


def test_seeder_exits_when_n_nodes_are_complete_and_each_node_leaves_a_done_marker(
        copy_ckpt, tmp_path: Path):
    ckpt = copy_ckpt()
    with SeederProc(ckpt, "--until-complete", "2", "--seed-timeout", "90") as s:
        nodes = [GetProc(s.magnet, "--dest", str(tmp_path / f"node{i}"), "--seed-while-needed",
                         "--idle-timeout", "2", "--timeout", "60") for i in range(2)]
        try:
            assert s.wait(90) == 0, s.stderr  # by itself: both nodes were seen complete
            for n in nodes:
                assert n.wait(60) == 0, n.stderr  # and they left once nobody needed them
        finally:
            for n in nodes:
                n.kill()
    stopped = [e for e in s.snapshot() if e.get("event") == "stopped"][-1]
    assert stopped["fleet"]["complete"] == 2
    assert stopped["uploaded"] > 0
    for i in range(2):
        dest = tmp_path / f"node{i}"
        assert tree_bytes(dest / "ckpt-0") == tree_bytes(ckpt / "ckpt-0")
        marker = json.loads(done_marker(dest).read_text())
        assert marker["complete"] is True
        assert marker["info_hash"] == s.info_hash
        assert marker["files"] == len(list((ckpt / "ckpt-0").iterdir()))
        assert marker["manifest_sha256"] and Path(marker["manifest"]).is_file()


def test_seed_timeout_before_enough_nodes_finished_is_exit_4_saying_how_many(
        copy_ckpt, tmp_path: Path):
    ckpt = copy_ckpt()
    with SeederProc(ckpt, "--until-complete", "3", "--seed-timeout", "20") as s:
        g = run_get(s.magnet, "--dest", str(tmp_path / "only"), "--seed-while-needed",
                    "--idle-timeout", "3", "--timeout", "30")
        assert g.proc.returncode == 0, g.stderr
        assert s.wait(40) == 4
    assert s.stderr.splitlines()[-1] == (
        f"Error: {ckpt}: 1 of 3 nodes complete after --seed-timeout 20 s")


def test_seeder_progress_lines_show_each_peer(copy_ckpt, tmp_path: Path):
    ckpt = copy_ckpt()
    with SeederProc(ckpt, "--max-upload-rate", "2M") as s:
        # a node that leaves the instant it is done may go unseen: it stays 3 s once done
        with GetProc(s.magnet, "--dest", str(tmp_path / "n"), "--seed-while-needed",
                     "--idle-timeout", "3", "--timeout", "60") as g:
            ev = s.wait_for(lambda e: e.get("event") == "progress" and e["fleet"]["connected"],
                            30, "a progress line with a peer")
            peer = ev["fleet"]["peers"][0]
            assert peer["address"].startswith("127.0.0.1:")
            assert 0.0 <= peer["progress"] <= 1.0 and len(peer["peer_id"]) == 40
            assert g.wait(60) == 0, g.stderr
        done = s.wait_for(lambda e: e.get("event") == "progress" and e["fleet"]["complete"], 20,
                          "the node seen complete")
        assert done["fleet"]["seen"] == 1
        s.stop()


class NodeProc(GetProc):
    """A `grokfetch get` listening on a port of the test's choosing (others dial it)."""

    def __init__(self, port: int, *args: str) -> None:
        JsonProc.__init__(self, grokfetch_cmd("get", *args, "--listen", f"127.0.0.1:{port}",
                                              "--no-dht", "--no-utp", "--json-progress"))


def test_a_node_serves_the_next_one_while_it_needs_pieces_then_leaves_by_itself(
        copy_ckpt, tmp_path: Path):
    ckpt = copy_ckpt()
    port = _free_port()
    with SeederProc(ckpt, "--max-upload-rate", "2M") as origin:
        a = NodeProc(port, str(origin.torrent), "--dest", str(tmp_path / "a"), "--peer",
                     origin.peer, "--seed-while-needed", "--idle-timeout", "3", "--timeout", "60")
        b = GetProc(str(origin.torrent), "--dest", str(tmp_path / "b"), "--peer",
                    f"127.0.0.1:{port}", "--timeout", "60")  # b is told only of a
        try:
            assert b.wait(60) == 0, b.stderr
            assert a.wait(60) == 0, a.stderr  # b has left: a stops 3 s later, by itself
        finally:
            a.kill()
            b.kill()
    assert tree_bytes(tmp_path / "b" / "ckpt-0") == tree_bytes(ckpt / "ckpt-0")
    assert "seeding until no peer has needed a piece for 3 s" in a.messages()
    assert a.result()["uploaded"] > 0  # a did serve b


def test_a_rerun_removes_the_done_marker_before_it_changes_anything(copy_ckpt, tmp_path: Path):
    ckpt = copy_ckpt()
    dest = tmp_path / "n"
    with SeederProc(ckpt) as s:
        assert run_get(s.magnet, "--dest", str(dest), "--timeout", "30").proc.returncode == 0
        torrent = s.torrent
    assert done_marker(dest).is_file()
    flip_byte(dest / "ckpt-0" / "tensor00001_000", 100)
    # a repair with nobody to fetch the bad piece from: it stops at --timeout, and no
    # marker says the folder is ready while it is not
    g = run_get(str(torrent), "--dest", str(dest), "--repair", "--peer",
                f"127.0.0.1:{_free_port()}", "--timeout", "3")
    assert g.proc.returncode == 4, g.stderr
    assert not done_marker(dest).exists()
