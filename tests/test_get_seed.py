"""`grokfetch seed` and `get --seed`: how one node hands the weights to the next.

A seeder prints a magnet that names it (``x.pe``), so `get MAGNET` needs no
--peer; a node that finished with `get --seed` serves the next node itself.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from lt_helpers import LOOPBACK, GetProc, SeederProc, run_get, tree_bytes

from grokfetch.cli import cli
from grokfetch.errors import UsageError
from grokfetch.fetch import torrent
from grokfetch.fetch.torrent import NetOptions, Seeder
from grokfetch.format.metainfo import load_torrent, make_torrent

NET = NetOptions(listen="127.0.0.1:0", dht=False, utp=False)


@pytest.fixture
def ckpt(copy_ckpt) -> Path:
    return copy_ckpt()


def test_seed_makes_a_torrent_and_prints_a_magnet_naming_itself(ckpt: Path, tmp_path: Path):
    with SeederProc(ckpt) as s:
        assert s.torrent == ckpt / "ckpt-0.torrent"  # made on first seed, beside ckpt-0/
        assert re.search(r"&x\.pe=127\.0\.0\.1:\d+$", s.magnet)
        seeding = [e for e in s.snapshot() if e.get("event") == "seeding"]
        assert seeding[0]["verified"] == "lazy"  # the pinned manifest vouches
        g = run_get(s.magnet, "--dest", str(tmp_path / "dl"), "--timeout", "30")
        assert g.proc.returncode == 0, g.stderr
        status = s.stop()
    assert tree_bytes(tmp_path / "dl" / "ckpt-0") == tree_bytes(ckpt / "ckpt-0")
    assert status["uploaded"] >= g.result()["wanted"]


def test_downloaded_folder_seeds_with_the_saved_torrent(ckpt: Path, tmp_path: Path):
    with SeederProc(ckpt) as first:
        dest = tmp_path / "node1"
        assert run_get(first.magnet, "--dest", str(dest), "--timeout", "30").proc.returncode == 0
    with SeederProc(dest) as second:  # the folder `get` filled, seeded as it is
        assert second.info_hash == first.info_hash
        assert second.torrent == dest / "ckpt-0.torrent"
        g = run_get(second.magnet, "--dest", str(tmp_path / "node2"), "--timeout", "30")
        assert g.proc.returncode == 0, g.stderr


def test_get_then_seed_serves_the_next_node(ckpt: Path, tmp_path: Path):
    with SeederProc(ckpt) as origin:
        with GetProc(origin.magnet, "--dest", str(tmp_path / "a"), "--seed",
                     "--seed-ratio", "1", "--timeout", "60") as a:
            listening = a.wait_for(lambda e: "listening on" in e.get("message", ""), 20)
            a.wait_for(lambda e: e.get("event") == "progress" and e["state"] == "seeding"
                       and e["wanted"] > 0, 30, "node a seeding")
            origin.stop()  # from now on only node a has the data
            port = listening["message"].rsplit(":", 1)[1]
            b = run_get(origin.bare_magnet, "--peer", f"127.0.0.1:{port}",
                        "--dest", str(tmp_path / "b"), "--timeout", "30")
            assert b.proc.returncode == 0, b.stderr
            assert a.wait(30) == 0, a.stderr  # ratio 1 reached: it stops by itself
    assert tree_bytes(tmp_path / "b" / "ckpt-0") == tree_bytes(ckpt / "ckpt-0")
    assert a.result()["uploaded"] >= a.result()["wanted"]


def test_full_check_finds_a_corrupt_piece_and_warns(ckpt: Path):
    make_torrent(ckpt)  # of the good data
    victim = ckpt / "ckpt-0" / "tensor00002_000"
    data = bytearray(victim.read_bytes())
    data[100] ^= 1
    victim.write_bytes(bytes(data))
    messages: list[str] = []
    with Seeder(ckpt, net=NET, full_check=True, on_message=messages.append) as s:
        assert s.info is not None and s.info.verified == "full"
        assert s.info.have == s.info.total - _piece(ckpt)  # exactly the one bad piece
    assert any("only" in m and "verified" in m for m in messages)


def _piece(ckpt: Path) -> int:
    return load_torrent(ckpt / "ckpt-0.torrent")[1].piece_length


def test_unpinned_folder_is_fully_checked(ckpt: Path):
    (ckpt / "grokfetch-manifest.json").unlink()
    with Seeder(ckpt, net=NET) as s:
        assert s.info is not None
        assert s.info.verified == "full" and s.info.have == s.info.total
        assert s.status().state == "seeding"


def test_seed_refuses_a_folder_with_a_missing_file(ckpt: Path):
    with Seeder(ckpt, net=NET):  # makes the torrent
        pass
    (ckpt / "ckpt-0" / "tensor00005_000").unlink()
    with pytest.raises(UsageError, match="ckpt-0/tensor00005_000: missing; not seeding"):
        Seeder(ckpt, net=NET).start()  # checked against the pin, before the torrent
    r = CliRunner().invoke(cli, ["seed", str(ckpt), *LOOPBACK])
    assert r.exit_code == 2
    assert "does not hold the 146 files it pinned: ckpt-0/tensor00005_000: missing" in r.stderr
    (ckpt / "grokfetch-manifest.json").unlink()  # no pin: the torrent's file list decides
    r = CliRunner().invoke(cli, ["seed", str(ckpt), *LOOPBACK])
    assert r.exit_code == 2
    assert "files missing or of the wrong size for ckpt-0.torrent" in r.stderr


def test_seed_of_a_folder_without_a_checkpoint_is_a_usage_error(tmp_path: Path):
    r = CliRunner().invoke(cli, ["seed", str(tmp_path), *LOOPBACK])
    assert r.exit_code == 2
    assert "tensor00000_000" in r.stderr


def test_seed_with_an_explicit_torrent(ckpt: Path, tmp_path: Path):
    shutil.move(ckpt / "grokfetch-manifest.json", tmp_path / "m.json")
    with SeederProc(ckpt) as s:
        t = s.torrent
    with SeederProc(ckpt, "--torrent", str(t)) as s2:
        assert s2.info_hash == load_torrent(t)[1].info_hash


def corrupt(path: Path, offset: int = 5000) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + 8] = b"XXXXXXXX"
    path.write_bytes(bytes(data))


def test_a_bad_piece_found_while_seeding_names_its_file_and_bytes(ckpt: Path, tmp_path: Path):
    # Pinned, so the seeder checks each piece only as it first sends it.
    make_torrent(ckpt)  # of the good bytes
    corrupt(ckpt / "ckpt-0" / "tensor00003_000")
    said: list[str] = []
    with Seeder(ckpt, net=NET, on_message=said.append) as seeder:
        info = seeder.info
        assert info is not None and info.verified == "lazy"
        with GetProc(info.magnet, "--dest", str(tmp_path / "dl"), "--timeout", "30"):
            deadline = time.monotonic() + 20
            while not any("failed its hash check" in m for m in said):
                assert time.monotonic() < deadline, said
                seeder.status()
                time.sleep(0.05)
    msg = next(m for m in said if "failed its hash check" in m)
    assert re.search(r"ckpt-0/tensor00003_000 bytes \d+-\d+", msg), msg
    assert f"grokfetch verify {ckpt}" in msg


def test_a_full_check_that_finds_bad_pieces_names_their_files(ckpt: Path):
    t = make_torrent(ckpt)  # of the good bytes
    (ckpt / "grokfetch-manifest.json").unlink()  # not pinned: every piece is hashed first
    corrupt(ckpt / "ckpt-0" / "tensor00003_000")
    said: list[str] = []
    with Seeder(ckpt, net=NET, on_message=said.append) as seeder:
        assert seeder.info is not None and seeder.info.verified == "full"
    warning = next(m for m in said if m.startswith("warning: only"))
    assert re.search(r"\(piece \d+: .*ckpt-0/tensor00003_000 bytes 0-\d+\)", warning), warning
    assert f"grokfetch get {t} --dest {ckpt} --repair" in warning


def test_a_wildcard_listen_advertises_the_default_route_interface_not_loopback():
    """On this kind of machine (cloud, containers) the host name resolves to 127.0.0.1;
    the magnet must name the address of the interface holding the default route."""
    import socket

    has_default = any(line.split()[1:2] == ["00000000"]
                      for line in open("/proc/net/route").readlines()[1:])
    got = torrent.default_route_address()
    if has_default:
        assert got is not None and not got.startswith("127.")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # what the kernel picks as source for that route
            assert got == s.getsockname()[0]
        assert torrent.advertised_peer("0.0.0.0", 6881) == (got, 6881, None)
    else:
        assert got is None
    assert torrent.advertised_peer("10.0.0.5", 6881) == ("10.0.0.5", 6881, None)


def test_only_loopback_found_is_warned_about_loudly(monkeypatch):
    import socket

    monkeypatch.setattr(torrent, "default_route_address", lambda: None)
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda *a, **k: [(socket.AF_INET, 0, 0, "", ("127.0.0.1", 0))])
    host, port, warning = torrent.advertised_peer("0.0.0.0", 6881)
    assert (host, port) == ("127.0.0.1", 6881)
    assert warning is not None and "other machines cannot reach it" in warning
    assert "--advertise HOST:PORT" in warning
    assert torrent.advertised_peer("0.0.0.0", 6881, ("10.1.2.3", 7000)) == (
        "10.1.2.3", 7000, None)


def test_seed_advertise_puts_that_address_in_the_magnet(source):
    with SeederProc(source, "--advertise", "10.9.8.7:7000") as s:
        assert s.magnet.endswith("&x.pe=10.9.8.7:7000")
