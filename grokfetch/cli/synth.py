"""``grokfetch synth``: write a synthetic checkpoint in exactly the real format."""

from __future__ import annotations

import click

from grokfetch.cli.base import cli
from grokfetch.format.manifest import MANIFEST_NAME
from grokfetch.hashing import DEFAULT_CHUNK_SIZE
from grokfetch.progress import bytes_bar
from grokfetch.synth import PRESETS, resolve_config, synthesize


@cli.command("synth")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="mini", show_default=True,
              help="Model dimensions: mini (~8 MB, 12 layers), small (~40 MB), "
                   "grok-1 (the real shapes: 318 GB unless --layers is small).")
@click.option("--layers", "num_layers", type=click.IntRange(min=1), metavar="N",
              help="Number of decoder layers (overrides the preset; a count, not a "
                   "layer list as for get and repack).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed of the weights (same seed, same bytes).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=DEFAULT_CHUNK_SIZE,
              show_default=True, help="Bytes per BLAKE3 chunk hash in the manifest.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def synth_cmd(dest: str, preset: str, num_layers: int | None, seed: int, chunk_size: int,
              quiet: bool) -> None:
    """Write a synthetic checkpoint (random weights, real format) and its manifest to DEST.

    DEST is a new or empty folder, or an earlier synthetic checkpoint (replaced,
    stale files removed); any other folder is refused, so a download or a
    repack is never overwritten. A checkpoint that does not fit the free disk
    space is refused before anything is written (exit 5).
    """
    cfg = resolve_config(preset, num_layers)
    m = synthesize(dest, preset, num_layers=num_layers, seed=seed, chunk_size=chunk_size,
                   progress=lambda total, desc: bytes_bar(total, desc, False if quiet else None))
    if not quiet:
        click.echo(f"{dest}: {len(m.files)} files, {m.total_size:,} bytes "
                   f"({cfg.num_layers} layers, emb {cfg.emb_size}); manifest "
                   f"{dest}/{MANIFEST_NAME}")
