"""``grokfetch repack``: turn a checkpoint into safetensors files (see grokfetch.repack)."""

from __future__ import annotations

from dataclasses import asdict

import click

from grokfetch.cli.base import cli, echo_json, json_errors, stderr
from grokfetch.cli.inspect import load_config_option
from grokfetch.progress import bytes_bar
from grokfetch.repack.plan import DEFAULT_SHARD_SIZE, DTYPES, LAYOUTS
from grokfetch.repack.run import RepackResult, repack
from grokfetch.units import format_bytes


def summary(r: RepackResult) -> str:
    """The human summary: what was written, how fast, how to check it."""
    rate = r.bytes_written / r.seconds if r.seconds > 0 else 0.0
    lines = [
        f"{r.dest}: {r.files} files ({len(r.written)} written, {len(r.skipped)} already done), "
        f"layout {r.layout}, dtype {r.dtype}",
        f"wrote {format_bytes(r.bytes_written)} of tensors in {r.seconds:.1f} s "
        f"({format_bytes(rate)}/s); "
        f"{format_bytes(r.bytes_out)} on disk",
    ]
    if r.compress and r.bytes_out:
        lines.append(f"{r.compress}: ratio {r.payload_total / r.bytes_out:.3f} "
                     f"({format_bytes(r.payload_total)} -> {format_bytes(r.bytes_out)})")
    if r.removed_temps:
        lines.append(f"removed {r.removed_temps} temp file(s) of an interrupted run")
    tok = r.tokenizer
    if tok:
        which = ("Grok-1's official tokenizer" if tok["official"]
                 else f"{tok['source']}, not the official Grok-1 tokenizer")
        lines.append(f"{tok['path']}: {which} (sha256 {tok['sha256']})")
    lines.append(f"manifest {r.manifest_path}; check it with: grokfetch verify {r.dest}")
    return "\n".join(lines)


@cli.command("repack")
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["safetensors"]), default="safetensors",
              show_default=True, help="Output format.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="per-tensor", show_default=True,
              help="per-tensor: one file per parameter; sglang: bf16 shards with the names, "
                   "[out, in] orientation and per-expert split SGLang and llama.cpp load.")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="keep: int8 weight + bf16 scales as shipped (lossless; per-tensor default); "
                   "bf16 / f32: dequantized (sglang default: bf16).")
@click.option("--compress", metavar="zstd[:LEVEL]",
              help="zstd-compress each output (.safetensors.zst, all cores; default level 3).")
@click.option("--layers", metavar="SPEC",
              help="Only these layers (e.g. 0-3,10), plus the embedding and the final norm.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=2, show_default=True,
              help="Output files written in parallel.")
@click.option("--force", is_flag=True,
              help="Redo every output, even those an earlier run finished.")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE,
              show_default=True, help="sglang layout: bytes per shard.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Model config JSON (official field names) instead of the checkpoint's.")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(dir_okay=False),
              help="SentencePiece tokenizer.model to put beside the weights (default: Grok-1's, "
                   "packaged; another is checked to be a SentencePiece model).")
@click.option("--chunk-hashes", is_flag=True,
              help="Also list the BLAKE3 of each 64 MiB chunk of every output, so verify "
                   "locates damage inside a file and --quick samples chunks (a second "
                   "BLAKE3 of every byte written).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def repack_cmd(src: str, dest: str, fmt: str, layout: str, dtype: str | None,
               compress: str | None, layers: str | None, jobs: int, force: bool,
               shard_size: int, config_path: str | None, tokenizer_path: str | None,
               chunk_hashes: bool, as_json: bool, quiet: bool) -> None:
    """Repack the checkpoint in SRC into safetensors files in DEST, never unpickling.

    Restartable: rerun the same command after an interruption and finished
    files are kept (their BLAKE3 is checked against DEST's manifest). DEST gets
    grokfetch-manifest.json, so `grokfetch verify DEST` checks the result.
    """
    json_errors("document" if as_json else None)
    enabled = False if (quiet or as_json) else None
    result = repack(
        src, dest, layout=layout, dtype=dtype, compress=compress, layers=layers, jobs=jobs,
        force=force, shard_size=shard_size, chunk_hashes=chunk_hashes,
        config=load_config_option(config_path),
        tokenizer=tokenizer_path,
        progress=lambda total, desc: bytes_bar(total, desc, enabled),
    )
    if as_json:
        d = asdict(result)
        d.update(dest=str(result.dest), manifest_path=str(result.manifest_path))
        echo_json(d)
    elif not quiet:
        click.echo(summary(result))
    if result.config_source == "inferred":
        stderr(f"note: the model config was inferred from the file shapes, head size "
               f"{result.key_size} assumed (the files do not record it); {result.dest}'s "
               "manifest and config.json now hold it - if it is wrong, rerun with --config "
               "(finished files are kept)")
