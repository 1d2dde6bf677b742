"""`grokfetch get` against a real seeder (a libtorrent session in a subprocess) on 127.0.0.1.

Each test reads as a scenario: a seeder serves the synthesized mini checkpoint
(~8 MB, 16 KiB pieces), and `get` fetches it by magnet, by .torrent or from an
HTTP web seed, gets interrupted, killed, corrupted, or refuses to start.
Byte counts come from the session's own counters, reported in the JSON
progress lines and the final result.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import PIECE
from lt_helpers import (
    LOOPBACK,
    GetProc,
    HttpServerProc,
    SeederProc,
    handmade_torrent,
    run_get,
    tree_bytes,
)

from grokfetch.cli import cli
from grokfetch.fetch import torrent
from grokfetch.format.manifest import load_manifest
from grokfetch.format.metainfo import load_torrent, make_torrent


@pytest.fixture(scope="module")
def seeder(source: Path):
    """One unthrottled seeder shared by the tests that only need the bytes."""
    with SeederProc(source) as s:
        yield s


def manifest_arg(source: Path) -> list[str]:
    return ["--manifest", str(source / "grokfetch-manifest.json")]


def ckpt_files(root: Path) -> dict[str, bytes]:
    return tree_bytes(root / "ckpt-0")


def test_magnet_only_download_with_peer(tmp_path: Path, source: Path, seeder: SeederProc):
    dest = tmp_path / "dl"
    # A bare magnet: the metadata and every byte come from the --peer.
    g = run_get(seeder.bare_magnet, "--dest", str(dest), "--peer", seeder.peer,
                *manifest_arg(source), "--timeout", "30")
    assert g.proc.returncode == 0, g.stderr
    result = g.result()
    assert ckpt_files(dest) == ckpt_files(source)
    assert result["complete"] is True
    assert result["wanted"] == load_manifest(source / "grokfetch-manifest.json").total_size
    assert result["downloaded"] >= result["wanted"]
    # The metadata was saved into DEST as a .torrent with the same info-hash.
    saved = Path(result["torrent_path"])
    assert saved.parent == dest and load_torrent(saved)[1].info_hash == seeder.info_hash
    assert any("metadata received" in m for m in g.messages())
    assert g.progress()[-1]["state"] == "seeding"
    # Done means pinned: the BLAKE3 manifest now sits in the checkpoint root.
    assert result["manifest_path"] == str(dest / "grokfetch-manifest.json")
    pinned = load_manifest(dest / "grokfetch-manifest.json")
    original = load_manifest(source / "grokfetch-manifest.json")
    assert pinned.pinned
    assert [(f.path, f.blake3) for f in pinned.files] == [
        (f.path, f.blake3) for f in original.files]


def test_rerun_of_finished_download_fetches_nothing(tmp_path: Path, source: Path,
                                                     seeder: SeederProc):
    dest = tmp_path / "dl"
    args = [seeder.magnet, "--dest", str(dest), *manifest_arg(source), "--timeout", "30"]
    assert run_get(*args).proc.returncode == 0
    again = run_get(*args)
    assert again.proc.returncode == 0, again.stderr
    assert again.result()["downloaded"] == 0
    assert any("resuming" in m for m in again.messages())


def test_layers_fetches_only_expected_files(tmp_path: Path, source: Path, seeder: SeederProc):
    dest = tmp_path / "dl"
    man = load_manifest(source / "grokfetch-manifest.json")
    expected = {f.path for f in man.files if f.layer in (None, 0, 3)}
    g = run_get(seeder.magnet, "--dest", str(dest), *manifest_arg(source), "--layers", "0,3",
                "--timeout", "30")
    assert g.proc.returncode == 0, g.stderr
    got = {f"ckpt-0/{name}" for name in ckpt_files(dest)}
    assert got == expected
    # Nothing else beside them and their pin: libtorrent's part file sits with our state.
    assert sorted(p.name for p in dest.iterdir()) == [
        ".grokfetch", "ckpt-0", "ckpt-0.torrent", "grokfetch-manifest.json"]
    assert list((dest / ".grokfetch").glob("*.parts"))
    for path in expected:
        assert (dest / path).read_bytes() == (source / path).read_bytes()
    result = g.result()
    assert result["files"] == len(expected)
    assert result["wanted"] == sum(f.size for f in man.files if f.path in expected)
    # a partial pin: exactly the files fetched, proven by the torrent
    assert result["complete"] is False and result["manifest_path"] == str(
        dest / "grokfetch-manifest.json")
    pin = load_manifest(dest / "grokfetch-manifest.json")
    assert {e.path for e in pin.files} == expected
    assert [r.kind for r in pin.pinned_by] == ["torrent"]
    # It said how much it would fetch before starting.
    assert any(f"{len(expected)} of {len(man.files)} files" in m for m in g.messages())


def test_include_glob_selects_by_path(tmp_path: Path, source: Path, seeder: SeederProc):
    dest = tmp_path / "dl"
    g = run_get(seeder.magnet, "--dest", str(dest), *manifest_arg(source),
                "--include", "ckpt-0/tensor0000[0-2]_000", "--include", "tensor00010_000",
                "--timeout", "30")
    assert g.proc.returncode == 0, g.stderr
    assert sorted(ckpt_files(dest)) == [
        "tensor00000_000", "tensor00001_000", "tensor00002_000", "tensor00010_000"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_resume_after_interrupt_downloads_only_the_rest(tmp_path: Path, source: Path, sig: int):
    dest = tmp_path / "dl"
    with SeederProc(source, "--max-upload-rate", "1M") as slow:
        args = ["--dest", str(dest), *manifest_arg(source), "--timeout", "30"]
        with GetProc(slow.magnet, *args) as g:
            ev = g.wait_for(lambda e: e.get("event") == "progress"
                            and e["wanted"] > 0 and e["wanted_done"] > e["wanted"] // 4,
                            30, "a quarter of the data")
            g.signal(sig)  # Ctrl-C, or a scheduler stopping the job
            assert g.wait(10) == 130, g.stderr
            assert "state saved" in g.stderr
            done_before = g.progress()[-1]["wanted_done"]
            assert done_before >= ev["wanted_done"]
    with SeederProc(source) as fast:
        again = run_get(fast.magnet, *args)
    assert again.proc.returncode == 0, again.stderr
    result = again.result()
    assert ckpt_files(dest) == ckpt_files(source)
    # Next to nothing twice: what was missing, plus at most a few pieces in flight.
    wanted = again.progress()[-1]["wanted"]  # in whole pieces, like done_before
    assert result["downloaded"] <= wanted - done_before + 8 * PIECE
    assert not any("rechecking" in m for m in again.messages())


@pytest.mark.slow
def test_rerun_after_sigkill_rechecks_and_keeps_good_pieces(tmp_path: Path, source: Path):
    dest = tmp_path / "dl"
    with SeederProc(source, "--max-upload-rate", "1M") as slow:
        args = ["--dest", str(dest), *manifest_arg(source), "--timeout", "30",
                "--resume-interval", "0.5"]
        with GetProc(slow.magnet, *args) as g:
            g.wait_for(lambda e: e.get("event") == "progress" and e["resume_saved_done"] > 0
                       and e["wanted_done"] > e["wanted"] // 3, 30, "a saved third")
            g.kill()  # SIGKILL: no chance to save anything
            saved = max(e["resume_saved_done"] for e in g.progress())
            assert 0 < saved < g.progress()[-1]["wanted"]
    with SeederProc(source) as fast:
        again = run_get(fast.magnet, *args)
    assert again.proc.returncode == 0, again.stderr
    assert any("rechecking" in m for m in again.messages())
    result = again.result()
    assert result["rechecked"] is True
    assert ckpt_files(dest) == ckpt_files(source)
    # No more than what had not been covered by the last resume save.
    assert result["downloaded"] <= again.progress()[-1]["wanted"] - saved


def test_repair_refetches_only_bad_pieces(tmp_path: Path, source: Path, seeder: SeederProc):
    dest = tmp_path / "dl"
    args = [str(source / "ckpt-0.torrent"), "--dest", str(dest), "--peer", seeder.peer,
            *manifest_arg(source), "--timeout", "30"]
    first = run_get(*args)
    assert first.proc.returncode == 0, first.stderr
    victim = dest / "ckpt-0" / "tensor00002_000"  # a MoE weight, several pieces long
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    # libtorrent's resume data trusts the disk, the pin pass does not: it finds the bad
    # piece, and the rerun fetches exactly that piece before it pins
    plain = run_get(*args)
    assert plain.proc.returncode == 0, plain.stderr
    assert plain.result()["downloaded"] == PIECE and plain.result()["rechecked"] is True
    assert any("tensor00002_000" in m and "does not match the torrent" in m
               for m in plain.messages())
    assert victim.read_bytes() == (source / "ckpt-0" / "tensor00002_000").read_bytes()

    victim.write_bytes(bytes(data))  # flipped again: --repair rechecks up front
    g = run_get(*args, "--repair")
    assert g.proc.returncode == 0, g.stderr
    assert victim.read_bytes() == (source / "ckpt-0" / "tensor00002_000").read_bytes()
    result = g.result()
    assert result["rechecked"] is True
    assert result["downloaded"] == PIECE  # the one piece holding the flipped byte


def test_a_seed_met_before_a_recheck_that_finds_a_bad_piece_is_dialled_again(tmp_path: Path,
                                                                              source: Path):
    """The rerun above, with the order the race sometimes gave it on a loaded machine: the
    seeder and this node meet while both are seeds (and part), then the recheck finds the
    bad piece.  libtorrent then counts no peer it may dial - the seeder is still "a seed,
    useless to a seed" - and never redials it; the loop has it recount its candidates."""
    import time

    import libtorrent as lt

    net = torrent.NetOptions(listen="127.0.0.1:0", dht=False, utp=False)
    dest = tmp_path / "dl"
    shutil.copytree(source, dest)
    ti = (source / "ckpt-0.torrent").read_bytes()

    def add(ses, folder: Path):
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(lt.bdecode(ti))
        atp.save_path = str(folder)
        return ses.add_torrent(atp)

    def until(cond, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    seeder_ses, ses = torrent.make_session(net), torrent.make_session(net)
    seeding, h = add(seeder_ses, source), add(ses, dest)
    until(lambda: seeding.status().is_seeding and h.status().is_seeding, "both seeding")
    h.connect_peer(("127.0.0.1", seeder_ses.listen_port()))
    until(lambda: h.status().list_seeds == 1, "the seeder met, and known as a seed")
    victim = dest / "ckpt-0" / "tensor00002_000"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    h.force_recheck()
    until(lambda: h.status().state == lt.torrent_status.downloading, "the recheck done")
    torrent.recount_connect_candidates(ses)
    h.connect_peer(("127.0.0.1", seeder_ses.listen_port()))
    until(lambda: h.status().is_finished, "the bad piece fetched again")
    good = (source / "ckpt-0" / "tensor00002_000").read_bytes()
    h.flush_cache()  # a piece counts once its hash passes; its write may still be queued
    until(lambda: victim.read_bytes() == good, "the fetched piece written")


def test_web_seed_only_download(tmp_path: Path, source: Path):
    dest = tmp_path / "dl"
    # The URL names the folder holding the torrent's root folder (ckpt-0/).
    with HttpServerProc(source) as http:
        g = run_get(str(source / "ckpt-0.torrent"), "--dest", str(dest),
                    "--web-seed", http.url, *manifest_arg(source), "--timeout", "30")
    assert g.proc.returncode == 0, g.stderr
    assert ckpt_files(dest) == ckpt_files(source)
    result = g.result()
    assert result["downloaded"] >= result["wanted"]


def test_torrent_with_dotdot_path_is_refused(tmp_path: Path):
    evil = tmp_path / "evil.torrent"
    evil.write_bytes(handmade_torrent("ckpt-0", [(["..", "..", "escaped"], b"x" * 100)]))
    dest = tmp_path / "dest"
    r = CliRunner().invoke(cli, ["get", str(evil), "--dest", str(dest), *LOOPBACK])
    assert r.exit_code == 2
    assert "unsafe file path '../../escaped'" in r.stderr
    assert not (tmp_path / "escaped").exists()
    assert not list(dest.rglob("escaped"))


def test_torrent_name_with_dotdot_is_refused(tmp_path: Path):
    evil = tmp_path / "evil.torrent"
    evil.write_bytes(handmade_torrent("..", [(["x"], b"x" * 100)]))
    r = CliRunner().invoke(cli, ["get", str(evil), "--dest", str(tmp_path / "d"), *LOOPBACK])
    assert r.exit_code == 2
    assert "unsafe torrent name '..'" in r.stderr


def test_insufficient_space_refused_before_any_byte(tmp_path: Path, source: Path,
                                                    seeder: SeederProc,
                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torrent, "free_space", lambda path: 1_000_000)  # a 1 MB disk
    dest = tmp_path / "dl"
    r = CliRunner().invoke(cli, ["get", seeder.magnet, "--dest", str(dest),
                                 *manifest_arg(source), *LOOPBACK, "--timeout", "30", "-q"])
    assert r.exit_code == 5, r.output
    assert "not enough free space" in r.stderr and "1.0 MB free" in r.stderr
    assert not (dest / "ckpt-0").exists()  # the metadata came, not one byte of data


def test_no_space_check_overrides(tmp_path: Path, source: Path, seeder: SeederProc,
                                  monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torrent, "free_space", lambda path: 0)
    dest = tmp_path / "dl"
    r = CliRunner().invoke(cli, ["get", seeder.magnet, "--dest", str(dest), "--include",
                                 "tensor00001_000", *manifest_arg(source), *LOOPBACK,
                                 "--timeout", "30", "-q", "--no-space-check"])
    assert r.exit_code == 0, r.stderr
    assert (dest / "ckpt-0" / "tensor00001_000").is_file()


def test_torrent_that_disagrees_with_manifest_stops(tmp_path: Path, source: Path):
    other = tmp_path / "other"
    shutil.copytree(source / "ckpt-0", other / "ckpt-0")
    with open(other / "ckpt-0" / "tensor00003_000", "ab") as f:
        f.write(b"extra")
    t = make_torrent(other, piece_size=PIECE)
    r = CliRunner().invoke(cli, ["get", str(t), "--dest", str(tmp_path / "d"),
                                 *manifest_arg(source), *LOOPBACK])
    assert r.exit_code == 4
    assert "disagrees with the manifest: ckpt-0/tensor00003_000 is" in r.stderr
    assert not (tmp_path / "d" / "ckpt-0").exists()


def test_a_file_where_the_checkpoint_folder_goes_is_a_disk_error_naming_it(
        tmp_path: Path, seeder: SeederProc):
    # By magnet the metadata arrives mid-run; libtorrent then stops the torrent, and its
    # status can show the error before the file_error_alert naming the file arrives.
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "ckpt-0").write_bytes(b"not a folder")
    g = run_get(seeder.bare_magnet, "--dest", str(dest), "--peer", seeder.peer,
                "--timeout", "30")
    assert g.proc.returncode == 5, g.stderr
    assert f"Error: {dest}/ckpt-0/tensor" in g.stderr and "Not a directory" in g.stderr
    assert (dest / "ckpt-0").read_bytes() == b"not a folder"


def test_stopped_torrent_with_an_error_file_but_no_alert_yet_names_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from types import SimpleNamespace

    monkeypatch.setattr(torrent, "ALERT_GRACE", 0.05)  # no alert will come

    class Errc:
        def value(self) -> int:
            return 21

        def message(self) -> str:
            return "Is a directory"

    files = SimpleNamespace(file_path=lambda i: f"ckpt-0/tensor{i:05d}_000")
    handle = SimpleNamespace(torrent_file=lambda: SimpleNamespace(files=lambda: files))
    session = SimpleNamespace(wait_for_alert=lambda ms: None, pop_alerts=lambda: [])
    run = torrent._Run(dest=tmp_path, state_dir=tmp_path, info_hash="ab" * 20, manifest=None,
                       include=(), layers=None, space_check=False, on_message=print)
    status = SimpleNamespace(errc=Errc(), error_file=4)
    err = torrent._stopped_error(run, session, handle, status)
    assert isinstance(err, torrent.DiskError)
    assert str(err).startswith(f"{tmp_path}/ckpt-0/tensor00004_000: Is a directory")
    status = SimpleNamespace(errc=Errc(), error_file=-4)  # the metadata: a torrent problem
    assert isinstance(torrent._stopped_error(run, session, handle, status), torrent.TorrentError)


def test_a_second_get_into_the_same_dest_is_refused_while_the_first_runs(
        tmp_path: Path, source: Path, seeder: SeederProc):
    dest = tmp_path / "dl"
    (dest / ".grokfetch").mkdir(parents=True)
    first = torrent._lock_dest(dest / ".grokfetch")  # what a running get holds
    try:
        g = run_get(seeder.magnet, "--dest", str(dest), *manifest_arg(source), "--timeout", "30")
        assert g.proc.returncode == 2
        assert f"Error: {dest}: another `grokfetch get` is downloading into this folder" in (
            g.stderr)
        assert not (dest / "ckpt-0").exists()
    finally:
        os.close(first)
    g = run_get(seeder.magnet, "--dest", str(dest), *manifest_arg(source), "--timeout", "30")
    assert g.proc.returncode == 0, g.stderr  # the lock went with its holder


def test_a_closed_stdout_is_not_reported_as_a_disk_error(tmp_path: Path, source: Path):
    # `get --json-progress | head -1`: the progress callback's write fails with EPIPE
    def gone(_msg: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    net = torrent.NetOptions(listen="127.0.0.1:0", dht=False, utp=False)
    with pytest.raises(BrokenPipeError):
        torrent.download(source / "ckpt-0.torrent", tmp_path / "d", net=net, on_message=gone)


def test_layers_without_a_manifest_is_a_usage_error(tmp_path: Path, source: Path):
    r = CliRunner().invoke(cli, ["get", str(source / "ckpt-0.torrent"), "--dest",
                                 str(tmp_path / "d"), "--layers", "0", *LOOPBACK])
    assert r.exit_code == 2
    assert "--layers needs a manifest" in r.stderr
    assert not (tmp_path / "d").exists()  # refused before DEST was made
    r = CliRunner().invoke(cli, ["get", str(source / "ckpt-0.torrent"), "--dest",
                                 str(tmp_path / "d"), "--layers", "12", *manifest_arg(source),
                                 *LOOPBACK])
    assert r.exit_code == 2
    assert "Error: bad layer spec '12': '12' is outside 0-11" in r.stderr
    assert not (tmp_path / "d").exists()


def test_seed_ratio_needs_seed(tmp_path: Path):
    r = CliRunner().invoke(cli, ["get", "grok-1", "--dest", str(tmp_path), "--seed-ratio", "1"])
    assert r.exit_code == 2
    assert "--seed-ratio needs --seed" in r.stderr


@pytest.mark.parametrize("text,value", [("0", 0), ("500K", 512000), ("20M", 20 << 20),
                                        ("1.5G", int(1.5 * (1 << 30))), ("20MiB", 20 << 20)])
def test_parse_rate(text: str, value: int):
    from grokfetch.cli.get import parse_rate

    assert parse_rate(text) == value


def test_bad_rate_and_peer_are_usage_errors(tmp_path: Path):
    r = CliRunner().invoke(cli, ["get", "grok-1", "--dest", str(tmp_path),
                                 "--max-download-rate", "fast"])
    assert r.exit_code == 2 and "rate 'fast'" in r.stderr
    r = CliRunner().invoke(cli, ["get", "grok-1", "--dest", str(tmp_path), "--peer", "nohost"])
    assert r.exit_code == 2 and "--peer 'nohost': expected HOST:PORT" in r.stderr


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs (needs root; skipped elsewhere), grown later with ``grow()``."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=32m", str(mnt)], check=True)

    try:
        yield mnt, grow
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_stops_with_path_and_rerun_continues(small_disk, source: Path,
                                                       seeder: SeederProc):
    mnt, grow = small_disk
    dest = mnt / "dl"
    args = [seeder.magnet, "--dest", str(dest), *manifest_arg(source), "--timeout", "30"]
    full = run_get(*args, "--no-space-check")  # ~8 MB into 2 MiB
    assert full.proc.returncode == 5, full.stderr
    assert f"Error: {dest}/ckpt-0/tensor" in full.stderr and "disk full" in full.stderr
    grow()  # space freed: the same command finishes the job
    again = run_get(*args)
    assert again.proc.returncode == 0, again.stderr
    assert ckpt_files(dest) == ckpt_files(source)
    assert again.result()["downloaded"] < again.result()["wanted"]  # kept what fitted


def test_library_download_reports_through_callbacks(tmp_path: Path, source: Path,
                                                    seeder: SeederProc):
    """The API the CLI (and the demo) render: callbacks in, a frozen result out."""
    seen: list[torrent.Progress] = []
    said: list[str] = []
    result = torrent.download(
        seeder.bare_magnet, tmp_path / "dl", peers=[seeder.peer],
        manifest=source / "grokfetch-manifest.json", include=["tensor0000[0-3]_000"],
        net=torrent.NetOptions(listen="127.0.0.1:0", dht=False, utp=False),
        progress_interval=0.05, timeout=30, on_progress=seen.append, on_message=said.append)
    assert isinstance(result, torrent.DownloadResult)
    with pytest.raises(AttributeError):
        result.wanted = 0  # type: ignore[misc]
    assert result.files == 4 and result.torrent_path == tmp_path / "dl" / "ckpt-0.torrent"
    assert result.wanted == sum((source / "ckpt-0" / f"tensor0000{i}_000").stat().st_size
                                for i in range(4))
    assert seen[-1].state == "seeding" and seen[-1].wanted_done == seen[-1].wanted
    assert seen[0].state in ("metadata", "downloading")
    assert any(m.startswith("ckpt-0: 4 of ") for m in said)


def test_progress_bar_counts_wanted_bytes_and_shows_peers_and_state(monkeypatch):
    from grokfetch.cli import get as get_cli

    class Bar:
        def __init__(self, total: int, desc: str, initial: int = 0) -> None:
            self.total, self.n, self.postfix = total, initial, ""
            self.initial = initial  # shown, but not counted in the rate

        def update(self, n: int) -> None:
            self.n += n

        def set_postfix_str(self, s: str, refresh: bool = True) -> None:
            self.postfix = s

        def close(self) -> None:
            pass

    monkeypatch.setattr(get_cli, "bytes_bar", Bar)
    r = get_cli.Renderer(quiet=False, json_progress=False)
    base = dict(downloaded=0, uploaded=0, download_rate=0, upload_rate=0, elapsed=1.0,
                resume_saved_done=-1)
    r.progress(torrent.Progress(state="metadata", wanted=0, wanted_done=0, peers=1, seeds=1,
                                **base))
    assert r.bar is None  # nothing to count before the metadata
    r.progress(torrent.Progress(state="downloading", wanted=1000, wanted_done=250, peers=3,
                                seeds=1, **base))
    r.progress(torrent.Progress(state="downloading", wanted=1000, wanted_done=600, peers=4,
                                seeds=2, **base))
    assert (r.bar.total, r.bar.n, r.bar.initial) == (1000, 600, 250)
    assert r.bar.postfix == "4 peers, 2 seeds, downloading"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_download_survives_the_seeder_going_away_and_coming_back(tmp_path: Path,
                                                                  source: Path):
    port = _free_port()
    listen = ["--listen", f"127.0.0.1:{port}"]
    dest = tmp_path / "dl"
    with SeederProc(source, *listen, "--max-upload-rate", "1M") as first, \
            GetProc(first.bare_magnet, "--peer", first.peer, "--dest", str(dest),
                    *manifest_arg(source), "--timeout", "60") as g:
        g.wait_for(lambda e: e.get("event") == "progress" and e["wanted"] > 0
                   and e["wanted_done"] > e["wanted"] // 4, 30, "a quarter of the data")
        first.stop()
        g.wait_for(lambda e: e.get("event") == "progress" and e["peers"] == 0, 15, "a stall")
        with SeederProc(source, *listen):  # back, same address: get redials it
            assert g.wait(30) == 0, g.stderr
    assert ckpt_files(dest) == ckpt_files(source)


def test_widening_the_selection_later_fetches_only_the_new_files(tmp_path: Path, source: Path,
                                                                 seeder: SeederProc):
    dest = tmp_path / "dl"
    args = [seeder.magnet, "--dest", str(dest), *manifest_arg(source), "--timeout", "30"]
    first = run_get(*args, "--layers", "0")
    assert first.proc.returncode == 0, first.stderr
    rest = run_get(*args)  # now everything
    assert rest.proc.returncode == 0, rest.stderr
    assert ckpt_files(dest) == ckpt_files(source)
    r1, r2 = first.result(), rest.result()
    # At most the pieces shared with the first selection's boundaries come twice.
    assert r2["downloaded"] <= r2["wanted"] - r1["wanted"] + 2 * r1["files"] * PIECE
    assert r2["manifest_path"] is not None  # complete now, so pinned


def test_narrowing_the_selection_later_keeps_the_files_already_there(tmp_path: Path,
                                                                     source: Path,
                                                                     seeder: SeederProc):
    dest = tmp_path / "dl"
    args = [seeder.magnet, "--dest", str(dest), *manifest_arg(source), "--timeout", "30"]
    assert run_get(*args).proc.returncode == 0
    narrow = run_get(*args, "--layers", "0")
    assert narrow.proc.returncode == 0, narrow.stderr
    assert narrow.result()["downloaded"] == 0
    assert ckpt_files(dest) == ckpt_files(source)  # nothing unselected was touched
