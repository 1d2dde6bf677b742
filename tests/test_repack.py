"""``grokfetch repack`` per-tensor layout: every output read back with safe_open equals its source.

All tests run on the session's mini checkpoint (12 layers, so the file order
0, 1, 10, 11, 2, ... matters) and write into tmp_path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import zstandard
from click.testing import CliRunner
from safetensors import safe_open
from test_safetensors_io import dequant

from grokfetch.cli import cli
from grokfetch.errors import CheckpointFormatError
from grokfetch.format.checkpoint import open_checkpoint
from grokfetch.format.folder import JOURNAL_NAME
from grokfetch.format.manifest import MANIFEST_NAME, load_manifest
from grokfetch.format.pickle_reader import scan
from grokfetch.hashing import file_digests
from grokfetch.repack.plan import parse_compress, per_tensor_rel
from grokfetch.repack.run import repack

BF16 = np.dtype(ml_dtypes.bfloat16)
CHUNK = 64 * 1024  # small chunks so the manifests' chunk lists are exercised


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors and the metadata of a .safetensors or .safetensors.zst file."""
    if path.name.endswith(".zst"):
        plain = path.with_name(path.name[:-4] + ".plain")
        with open(path, "rb") as f, open(plain, "wb") as out:
            zstandard.ZstdDecompressor().copy_stream(f, out)
        path = plain
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def assert_manifest_verifies(dest: Path, proven: bool = True) -> None:
    """What `grokfetch verify DEST` checks: every listed file hashes right, nothing extra;
    and the pin is proven when its source's was (exit 0), else says so (exit 6)."""
    m = load_manifest(dest / MANIFEST_NAME)
    assert m.pinned and m.repack is not None
    for e in m.files:
        d = file_digests(dest / e.path, m.chunk_size)
        assert d.blake3 == e.blake3, e.path
        # chunk hashes only when asked for (repack --chunk-hashes); a file of one chunk
        # has its one chunk hash whatever was asked
        assert e.chunks == d.chunks or (e.chunks is None and e.size > m.chunk_size), e.path
    on_disk = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert on_disk == {e.path for e in m.files} | {MANIFEST_NAME}
    r = CliRunner().invoke(cli, ["verify", str(dest)])
    assert r.exit_code == (0 if proven else 6), r.output
    if not proven:
        assert "from a checkpoint pinned by a source nothing proved" in r.stderr


@pytest.fixture(scope="module")
def keep_dest(mini_ckpt, tmp_path_factory):
    dest = tmp_path_factory.mktemp("keep") / "out"
    repack(mini_ckpt, dest, chunk_size=CHUNK)
    return dest


def test_keep_is_lossless_for_every_parameter(mini_ckpt, keep_dest):
    ckpt = open_checkpoint(mini_ckpt)
    m = load_manifest(keep_dest / MANIFEST_NAME)
    by_param = {e.param: e for e in m.files if e.param}
    assert len(by_param) == len(ckpt.params) == 146
    for spec in ckpt.params:
        entry = by_param[spec.module]
        src = scan(ckpt.path_of(spec)).load()
        got, meta = read_tensors(keep_dest / entry.path)
        if spec.kind == "quantized":
            assert set(got) == {"weight", "scales"}
            assert got["weight"].dtype == np.int8 and np.array_equal(got["weight"], src["weight"])
            assert got["scales"].dtype == BF16
            assert np.array_equal(got["scales"].view(np.uint16), src["scales"].view(np.uint16))
            assert meta["quantization_groups"] == str(spec.scale_groups)
        else:
            assert set(got) == {"weight"}
            assert got["weight"].dtype == np.float32
            assert np.array_equal(got["weight"], src["array"])
        assert meta["param"] == spec.module and meta["source_file"] == spec.file
        assert meta["source_blake3"] == ckpt.manifest.file(spec.file).blake3
        assert meta["tool"].startswith("grokfetch ")
        assert entry.source == {"file": spec.file, "blake3": ckpt.manifest.file(spec.file).blake3}
        assert entry.layer == spec.layer and entry.kind == spec.kind


def test_layer_10_file_holds_layer_10_weights(mini_ckpt, keep_dest):
    # File order is 0, 1, 10, 11, 2, ...: layer 10's moe/linear is file 26, not file 122.
    got, meta = read_tensors(
        keep_dest / "layer-10" / "transformer.decoder_layer_10.moe.linear.safetensors")
    src26 = scan(mini_ckpt / "ckpt-0" / "tensor00026_000").load()
    assert meta["source_file"] == "ckpt-0/tensor00026_000"
    assert np.array_equal(got["weight"], src26["weight"])
    layer2 = read_tensors(
        keep_dest / "layer-02" / "transformer.decoder_layer_2.moe.linear.safetensors")[0]
    assert not np.array_equal(layer2["weight"], src26["weight"])


def test_dest_manifest_and_config(mini_ckpt, keep_dest):
    m = load_manifest(keep_dest / MANIFEST_NAME)
    assert m.repack == {"layout": "per-tensor", "dtype": "keep", "compress": None}
    assert m.config == open_checkpoint(mini_ckpt).config
    config = json.loads((keep_dest / "config.json").read_text())
    assert config["num_layers"] == 12 and config["emb_size"] == 128
    assert m.file("config.json") is not None and m.file("config.json").param is None
    assert not (keep_dest / JOURNAL_NAME).exists()
    assert_manifest_verifies(keep_dest)


def test_folder_layout_is_browsable(keep_dest):
    top = sorted(p.name for p in keep_dest.iterdir())
    assert top[:3] == ["config.json", "grokfetch-manifest.json",
                       "language_model.in_out_embed.safetensors"]
    assert [p for p in top if p.startswith("layer-")] == [f"layer-{i:02d}" for i in range(12)]
    assert len(list((keep_dest / "layer-07").iterdir())) == 12


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_dequantized_outputs_are_exact(mini_ckpt, tmp_path, dtype):
    out = BF16 if dtype == "bf16" else np.dtype(np.float32)
    res = repack(mini_ckpt, tmp_path / dtype, dtype=dtype, chunk_size=CHUNK, jobs=2)
    ckpt = open_checkpoint(mini_ckpt)
    for spec in ckpt.params:
        src = scan(ckpt.path_of(spec)).load()
        got, meta = read_tensors(res.dest / per_tensor_rel(spec, 12, False))
        assert set(got) == {"weight"}
        if spec.kind == "quantized":
            want = dequant(src["weight"], src["scales"], out)
        else:  # plain arrays: float32 as is (f32), rounded to nearest-even (bf16)
            want = src["array"].astype(out)
        assert got["weight"].dtype == out and got["weight"].shape == want.shape
        assert np.array_equal(got["weight"], want), spec.module
        assert meta["dtype_mode"] == dtype
    assert_manifest_verifies(res.dest)


def test_zstd_outputs_decompress_to_the_plain_files(mini_ckpt, keep_dest, tmp_path):
    res = repack(mini_ckpt, tmp_path / "z", compress="zstd", chunk_size=CHUNK)
    m = load_manifest(res.dest / MANIFEST_NAME)
    assert m.repack["compress"] == "zstd:3"
    outputs = [e for e in m.files if e.param]
    assert all(e.path.endswith(".safetensors.zst") for e in outputs)
    for e in outputs[:20]:
        raw = zstandard.ZstdDecompressor().stream_reader(open(res.dest / e.path, "rb")).read()
        assert raw == (keep_dest / e.path[: -len(".zst")]).read_bytes()
    keep_outputs = [e for e in load_manifest(keep_dest / MANIFEST_NAME).files if e.param]
    assert res.payload_total == sum(e.size for e in keep_outputs) - _headers(keep_dest)
    assert_manifest_verifies(res.dest)


def _headers(dest: Path) -> int:
    """Bytes of safetensors headers (8 + N) across a per-tensor DEST."""
    total = 0
    for p in dest.rglob("*.safetensors"):
        with open(p, "rb") as f:
            total += 8 + int.from_bytes(f.read(8), "little")
    return total


def test_layers_subset_has_those_layers_plus_embedding_and_final_norm(mini_ckpt, tmp_path):
    res = repack(mini_ckpt, tmp_path / "l", layers="1,10-11", chunk_size=CHUNK)
    m = load_manifest(res.dest / MANIFEST_NAME)
    params = {e.param for e in m.files if e.param}
    assert {"language_model/in_out_embed", "language_model/rms_norm"} <= params
    assert {e.layer for e in m.files if e.layer is not None} == {1, 10, 11}
    assert len(params) == 2 + 3 * 12
    assert_manifest_verifies(res.dest)


def test_rerun_skips_finished_files_and_force_redoes_them(mini_ckpt, tmp_path):
    dest = tmp_path / "r"
    first = repack(mini_ckpt, dest, chunk_size=CHUNK)
    stats = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.rglob("*.safetensors")}
    again = repack(mini_ckpt, dest, chunk_size=CHUNK)
    assert again.written == [] and sorted(again.skipped) == sorted(first.written)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in stats} == stats
    # A damaged output is redone, and only that one.
    victim = dest / "layer-03" / "transformer.decoder_layer_3.router.safetensors"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    fixed = repack(mini_ckpt, dest, chunk_size=CHUNK)
    assert fixed.written == ["layer-03/transformer.decoder_layer_3.router.safetensors"]
    forced = repack(mini_ckpt, dest, chunk_size=CHUNK, force=True)
    assert len(forced.written) == 146 and forced.skipped == []
    assert_manifest_verifies(dest)


def test_chunk_hashes_are_listed_only_when_asked_and_verify_works_either_way(
        mini_ckpt, keep_dest, tmp_path):
    # By default an output larger than one chunk is listed by its whole-file BLAKE3
    # only (its chunk hashes would be a second BLAKE3 of every byte written);
    # --chunk-hashes lists them, exactly as the hashing engine computes them.
    plain = load_manifest(keep_dest / MANIFEST_NAME)
    outputs = [e for e in plain.files if e.path.endswith(".safetensors")]
    assert any(e.size > CHUNK for e in outputs)
    assert all(e.chunks == (None if e.size > CHUNK else [e.blake3]) for e in outputs)
    dest = tmp_path / "chunked"
    repack(mini_ckpt, dest, layers="3", chunk_size=CHUNK, chunk_hashes=True)
    chunked = load_manifest(dest / MANIFEST_NAME)
    assert any(e.chunks and len(e.chunks) > 1 for e in chunked.files)
    for e in chunked.files:
        assert e.chunks == file_digests(dest / e.path, chunked.chunk_size).chunks, e.path
    # Without chunk hashes verify still proves every output, --quick checks the sizes,
    # and a damaged output is FAILED (exit 1), named; a rerun of repack redoes it.
    for folder, manifest in ((keep_dest, plain), (dest, chunked)):
        assert CliRunner().invoke(cli, ["verify", str(folder), "--quick"]).exit_code == 0
        victim = max(manifest.files, key=lambda e: e.size)
        path = folder / victim.path
        data = path.read_bytes()
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
        try:
            r = CliRunner().invoke(cli, ["verify", str(folder)])
            assert r.exit_code == 1 and f"{victim.path}: FAILED" in r.output, r.output
        finally:
            path.write_bytes(data)


def test_cli_chunk_hashes_flag_asks_for_them(mini_ckpt, tmp_path, monkeypatch):
    from grokfetch.cli import repack as repack_cli

    asked: list[bool] = []

    def record(*args, **kwargs):
        asked.append(kwargs["chunk_hashes"])
        return repack(*args, **kwargs)

    monkeypatch.setattr(repack_cli, "repack", record)
    for flag, want in (([], False), (["--chunk-hashes"], True)):
        r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(tmp_path / str(want)),
                                     "--layers", "3", "-q", *flag])
        assert r.exit_code == 0, r.output
        assert asked[-1] is want


def test_force_replaces_a_repack_with_other_settings(mini_ckpt, tmp_path):
    dest = tmp_path / "f"
    repack(mini_ckpt, dest, compress="zstd:1", chunk_size=CHUNK)
    runner = CliRunner()
    r = runner.invoke(cli, ["repack", str(mini_ckpt), str(dest), "-q"])
    assert r.exit_code == 2
    assert "holds a repack with layout=per-tensor, dtype=keep, compress=zstd:1" in r.stderr
    r = runner.invoke(cli, ["repack", str(mini_ckpt), str(dest), "-q", "--force"])
    assert r.exit_code == 0, r.output
    assert not list(dest.rglob("*.zst"))  # the old outputs are gone, not left as extras
    assert_manifest_verifies(dest)


def test_cli_summary_and_json(mini_ckpt, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["repack", str(mini_ckpt), str(tmp_path / "c"), "--compress", "zstd"])
    assert r.exit_code == 0, r.output
    assert "146 files (146 written, 0 already done), layout per-tensor, dtype keep" in r.output
    assert "zstd:3: ratio" in r.output and "grokfetch verify" in r.output
    r = runner.invoke(cli, ["repack", str(mini_ckpt), str(tmp_path / "c"), "--compress", "zstd",
                            "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["written"] == [] and len(d["skipped"]) == 146 and d["compress"] == "zstd:3"


@pytest.mark.parametrize("args, message", [
    (["--layout", "sglang", "--dtype", "keep"], "--layout sglang needs --dtype bf16 or f32"),
    (["--layout", "sglang", "--compress", "zstd"], "cannot be compressed"),
    (["--compress", "gzip"], "unknown compression 'gzip'"),
    (["--compress", "zstd:99"], "bad zstd level 99"),
    (["--layers", "3-40"], "outside 0-11"),
])
def test_cli_usage_errors(mini_ckpt, tmp_path, args, message):
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(tmp_path / "u"), *args])
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: ") and message in r.stderr
    assert not (tmp_path / "u").exists()


def test_dest_cannot_be_the_source(copy_ckpt):
    src = copy_ckpt()
    for dest in (src, src / "ckpt-0"):
        r = CliRunner().invoke(cli, ["repack", str(src), str(dest)])
        assert r.exit_code == 2 and "is the source checkpoint's folder" in r.stderr
    assert load_manifest(src / MANIFEST_NAME).repack is None


def test_dest_cannot_be_inside_the_source(copy_ckpt):
    # The outputs would become extra files of the checkpoint: verify --strict fails on them.
    src = copy_ckpt()
    before = sorted(src.rglob("*"))
    for dest in (src / "st", src / "ckpt-0" / "st"):
        r = CliRunner().invoke(cli, ["repack", str(src / "ckpt-0"), str(dest)])
        assert r.exit_code == 2
        assert f"Error: {dest}: is inside the source checkpoint's folder {src}" in r.stderr
    assert sorted(src.rglob("*")) == before


def test_outputs_never_escape_dest_through_a_planted_symlink(mini_ckpt, tmp_path):
    dest = tmp_path / "d"
    outside = tmp_path / "elsewhere"
    dest.mkdir()
    outside.mkdir()
    os.symlink(outside, dest / "layer-04")
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(dest), "-j", "1"])
    assert r.exit_code == 2 and "resolves outside" in r.stderr
    assert list(outside.iterdir()) == []
    assert [p.name for p in dest.iterdir()] == ["layer-04"]  # refused before writing anything


def test_parse_compress():
    assert parse_compress(None) is None
    assert parse_compress("zstd") == 3
    assert parse_compress("zstd:19") == 19


def test_layer_runs_add_up_in_one_dest(mini_ckpt, tmp_path):
    dest = tmp_path / "parts"
    repack(mini_ckpt, dest, layers="0-1", chunk_size=CHUNK)
    second = repack(mini_ckpt, dest, layers="2", chunk_size=CHUNK)
    assert len(second.skipped) == 2 and len(second.written) == 12  # embedding + norm reused
    m = load_manifest(dest / MANIFEST_NAME)
    assert {e.layer for e in m.files if e.layer is not None} == {0, 1, 2}
    assert len([e for e in m.files if e.param]) == 2 + 3 * 12
    assert_manifest_verifies(dest)


def test_not_enough_space_is_refused_before_writing(mini_ckpt, tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1_000_000))
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(tmp_path / "full")])
    assert r.exit_code == 5
    assert "needs 7.7 MB for 146 output files, only 1.0 MB free" in r.stderr  # not "0.0 GB"
    assert not list((tmp_path / "full").rglob("*.safetensors"))


def test_dest_holding_another_checkpoint_is_refused(mini_ckpt, copy_ckpt):
    other = copy_ckpt("other")
    before = (other / MANIFEST_NAME).read_bytes()
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(other)])
    assert r.exit_code == 2 and "holds a grokfetch manifest that is not a repack's" in r.stderr
    assert (other / MANIFEST_NAME).read_bytes() == before
    assert not list(other.glob("*.safetensors"))


def test_sources_without_a_manifest_are_hashed(copy_ckpt, tmp_path):
    src = copy_ckpt()
    pinned = load_manifest(src / MANIFEST_NAME)
    (src / MANIFEST_NAME).unlink()  # config inferred from the files, hashes computed
    res = repack(src, tmp_path / "h", layers="10", chunk_size=CHUNK)
    m = load_manifest(res.dest / MANIFEST_NAME)
    for e in m.files:
        if e.source:
            assert e.source["blake3"] == pinned.file(e.source["file"]).blake3
    assert_manifest_verifies(res.dest, proven=False)  # nothing proved the source


def test_a_config_with_too_few_layers_is_refused_before_writing(tmp_path):
    from helpers import GOLDEN

    cfg = json.loads((GOLDEN / "layout.json").read_text())["meta"]["config"] | {"num_layers": 10}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(cli, ["repack", str(GOLDEN), str(tmp_path / "o"), "--config",
                                 str(tmp_path / "c.json")])
    assert r.exit_code == 2 and "the config says 10 layers" in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_partial_checkpoint_says_which_layers_it_can_repack(copy_ckpt, tmp_path):
    src = copy_ckpt()  # as `get --layers 2,10` leaves it: those layers, embedding, final norm
    for spec in open_checkpoint(src).params:
        if spec.layer not in (None, 2, 10):
            (src / spec.file).unlink()
    r = CliRunner().invoke(cli, ["repack", str(src), str(tmp_path / "o")])
    assert r.exit_code == 3
    assert r.stderr.startswith(f"Error: {src}/ckpt-0/tensor00002_000: missing (expected "
                               "transformer/decoder_layer_0/moe/linear) (and 119 more files); "
                               "the checkpoint holds only layers 2,10 (repack with --layers "
                               "2,10)")
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(cli, ["repack", str(src), str(tmp_path / "o"), "--layers", "2,10"])
    assert r.exit_code == 0, r.output


def test_an_inferred_config_is_flagged_not_silently_pinned_into_dest(tmp_path):
    # The golden files do not record the head size (16): inference guesses 32, and the
    # repack's manifest and config.json would carry the guess as if it were a fact.
    from helpers import GOLDEN

    r = CliRunner().invoke(cli, ["repack", str(GOLDEN), str(tmp_path / "g"), "-q"])
    assert r.exit_code == 0, r.output
    assert "note: the model config was inferred from the file shapes, head size 32 assumed" \
        in r.stderr
    cfg = json.loads((GOLDEN / "layout.json").read_text())["meta"]["config"]
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(cli, ["repack", str(GOLDEN), str(tmp_path / "g"), "--config",
                                 str(tmp_path / "c.json"), "--json"])
    assert r.exit_code == 0 and "note:" not in r.stderr
    assert json.loads(r.stdout)["written"] == []  # the fix costs no rewrite
    assert json.loads((tmp_path / "g" / "config.json").read_text())["key_size"] == 16


def test_a_dest_that_cannot_be_created_is_one_line_not_an_internal_error(mini_ckpt, tmp_path):
    (tmp_path / "a-file").write_text("")
    dest = tmp_path / "a-file" / "st"
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(dest)])
    assert r.exit_code == 2
    assert r.stderr == f"Error: {dest}: cannot create the folder (Not a directory)\n"


def test_src_given_as_dot_inside_ckpt_0_still_finds_the_pinned_manifest(mini_ckpt, tmp_path,
                                                                      monkeypatch):
    # `cd grok-1/ckpt-0; grokfetch repack . ../../st`: '.' has no name, so the folder was not
    # recognised as ckpt-0, the manifest beside it was missed, the config guessed and every
    # source re-hashed (318 GB).
    monkeypatch.chdir(mini_ckpt / "ckpt-0")
    r = CliRunner().invoke(cli, ["repack", ".", str(tmp_path / "st"), "--layers", "0", "-q"])
    assert r.exit_code == 0, r.output
    assert "inferred" not in r.stderr
    m = load_manifest(tmp_path / "st" / MANIFEST_NAME)
    assert m.config == load_manifest(mini_ckpt / MANIFEST_NAME).config
    assert m.notes.endswith(f"from {mini_ckpt.name}")
    r = CliRunner().invoke(cli, ["repack", ".", ".."])
    assert r.exit_code == 2 and "is the source checkpoint's folder" in r.stderr


def test_a_journal_symlinked_outside_dest_is_refused_and_never_appended_to(mini_ckpt,
                                                                           tmp_path):
    from grokfetch.repack.journal import Journal

    dest, outside = tmp_path / "d", tmp_path / "outside.txt"
    dest.mkdir()
    outside.write_text("mine\n")
    os.symlink(outside, dest / JOURNAL_NAME)
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(dest)])
    assert r.exit_code == 2 and "'.grokfetch-repack-journal.jsonl': resolves outside" in r.stderr
    assert [p.name for p in dest.iterdir()] == [JOURNAL_NAME]  # refused before writing
    # and the journal itself never follows a link, whoever plants it when
    journal = Journal(dest / JOURNAL_NAME, {}, CHUNK)
    entry = load_manifest(mini_ckpt / MANIFEST_NAME).files[0]
    with pytest.raises(OSError):
        journal.add(entry)
    assert outside.read_text() == "mine\n"


def test_files_another_tool_put_in_dest_are_not_overwritten_without_force(mini_ckpt, tmp_path):
    # e.g. a Hugging Face download in the folder: same config.json and shard names as ours
    dest = tmp_path / "hf"
    dest.mkdir()
    (dest / "config.json").write_text('{"theirs": 1}')
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(dest), "--layout", "sglang"])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: {dest}/config.json: exists and was not written by "
                               "grokfetch repack")
    assert [p.name for p in dest.iterdir()] == ["config.json"]
    assert (dest / "config.json").read_text() == '{"theirs": 1}'
    r = CliRunner().invoke(cli, ["repack", str(mini_ckpt), str(dest), "--layout", "sglang",
                                 "--force", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((dest / "config.json").read_text())["model_type"] == "mixtral"


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_an_unpinned_source_is_hashed_from_the_copy_and_its_blake3_recorded(
        copy_ckpt, tmp_path, monkeypatch, compress):
    # A copy without its pin (a mirror download, rsync): nothing vouches for the source,
    # so repack hashes every source file from the bytes it copies out of it and records
    # what it read.  The hash itself reads only the pickle framing around the arrays.
    import blake3

    from grokfetch.format.safetensors import SourceTap
    from grokfetch.repack import run

    taps: list[SourceTap] = []

    class Counted(SourceTap):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            taps.append(self)

    monkeypatch.setattr(run, "SourceTap", Counted)
    src = copy_ckpt()
    pinned = load_manifest(src / MANIFEST_NAME)
    (src / MANIFEST_NAME).unlink()
    dest = tmp_path / "out"
    repack(src, dest, layers="0", chunk_size=CHUNK, compress=compress)
    m = load_manifest(dest / MANIFEST_NAME)
    assert m.files
    for e in m.files:
        if e.source is None:
            continue
        want = blake3.blake3((src / e.source["file"]).read_bytes()).hexdigest()
        assert e.source["blake3"] == want == pinned.file(e.source["file"]).blake3
        meta = read_tensors(dest / e.path)[1]
        # the header comes before the payload the hash is made from: it names the file only
        assert meta["source_file"] == e.source["file"] and "source_blake3" not in meta
    for plain in dest.rglob("*.plain"):  # read_tensors' decompressed copies
        plain.unlink()
    assert taps and all(t.pos == t.size for t in taps)
    for t in taps:  # weight and scales came from the copy; the framing was read for the hash
        framing = t.size - sum(a.nbytes for a in scan(t.path).arrays.values())
        assert t.read_itself == framing < t.size, (t.path, t.read_itself, t.size)
    assert_manifest_verifies(dest, proven=False)


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_a_source_that_changes_size_during_its_copy_leaves_no_output(
        copy_ckpt, tmp_path, compress):
    # Scanned at one size, hashed at another: the hash would not be of the bytes the
    # plan was made from.  The output of that source is never renamed into place.
    from grokfetch.format.safetensors import SourceTap, Tensor, write_safetensors

    src = copy_ckpt()
    ckpt = open_checkpoint(src)
    spec = next(s for s in ckpt.params if s.kind == "quantized")
    path = ckpt.path_of(spec)
    pf = scan(path)
    tap = SourceTap(path, pf.size)
    with open(path, "ab") as f:
        f.write(b"more")
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "w.safetensors"
    with pytest.raises(CheckpointFormatError, match="changed during the repack"):
        write_safetensors(out, [Tensor("weight", pf.arrays["weight"]),
                                Tensor("scales", pf.arrays["scales"])],
                          compress_level=None if compress is None else 3, taps={path: tap})
    assert not list((tmp_path / "out").iterdir())  # no output, no temp file


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_each_output_is_fsynced_before_its_rename_and_each_folder_once_after_the_writes(
        mini_ckpt, tmp_path, monkeypatch):
    # Every fsync is a cache flush of the whole disk, so an output's folder is fsynced
    # (its rename made durable) once after all the writes, not once per output; the
    # output itself is still on disk before its final name appears.
    events: list[tuple[str, str, str]] = []  # (what, path, renamed to); appended at once
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")), ""))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    dest = tmp_path / "out"
    res = repack(mini_ckpt, dest, layers="0-1", chunk_size=CHUNK)
    finals = {os.path.realpath(dest / rel) for rel in res.written}
    renamed_at = {}
    for i, (what, tmp, final) in enumerate(events):
        if what == "rename" and final in finals:
            renamed_at[final] = i
            assert ("fsync", tmp, "") in events[:i], final  # its bytes before its name
    assert set(renamed_at) == finals
    manifest_at = next(i for i, e in enumerate(events)
                       if e[0] == "rename" and e[2] == os.path.realpath(dest / MANIFEST_NAME))
    folders = {os.path.dirname(p) for p in finals}
    assert len(folders) == 3  # DEST (embedding, final norm), layer-00, layer-01
    for folder in folders:
        synced = [i for i, e in enumerate(events) if e == ("fsync", folder, "")]
        assert synced and max(renamed_at.values()) < synced[0] < manifest_at, folder
        if folder != os.path.realpath(dest):  # DEST is synced again for config and manifest
            assert len(synced) == 1, folder


def test_the_journal_fsyncs_its_first_line_at_once_and_the_rest_within_its_interval(
        tmp_path, monkeypatch):
    # One fsync per finished output was one more cache flush of the disk per output; the
    # lines are written at once (a kill loses none) and fsynced at most once a second.
    from grokfetch.format.manifest import FileEntry
    from grokfetch.repack.journal import Journal, load_records

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    journal = Journal(tmp_path / JOURNAL_NAME, {"layout": "per-tensor"}, CHUNK)
    monkeypatch.setattr(Journal, "SYNC_INTERVAL", 3600.0)
    entries = [FileEntry(path=f"f{i}.safetensors", size=i, blake3=f"{i:064x}",
                         source={"file": f"t{i}"}) for i in range(3)]
    journal.add(entries[0])
    assert len(synced) == 1  # the first line: DEST is ours, durably
    journal.add(entries[1])
    journal.add(entries[2])
    assert len(synced) == 1
    records, _settings = load_records(tmp_path)  # written all the same (a kill keeps them)
    assert sorted(records) == [e.path for e in entries]
    journal.sync()
    assert len(synced) == 2
    journal.sync()  # nothing new: no flush
    assert len(synced) == 2
    monkeypatch.setattr(Journal, "SYNC_INTERVAL", 0.0)
    journal.add(entries[0])
    assert len(synced) == 3
