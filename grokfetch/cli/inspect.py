"""``grokfetch inspect``: what is in a checkpoint file or folder, without unpickling."""

from __future__ import annotations

from pathlib import Path

import click

from grokfetch.cli.base import cli, echo_json, json_errors
from grokfetch.errors import EXIT_BAD_CHECKPOINT, EXIT_PROBLEMS
from grokfetch.format.checkpoint import (
    DEFAULT_KEY_SIZE,
    InspectReport,
    inspect_checkpoint,
    inspect_file,
    load_config_file,
)
from grokfetch.format.layout import ModelConfig, param_list
from grokfetch.format.pickle_reader import ParamFile
from grokfetch.names import escape, escape_text


def load_config_option(path: str | None) -> ModelConfig | None:
    """Read a --config JSON file (official field names) into a ModelConfig."""
    return None if path is None else load_config_file(path)


def _shape(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _file_json(pf: ParamFile) -> dict:
    return {
        "path": str(pf.path), "size": pf.size, "kind": pf.kind,
        "numpy_spelling": pf.numpy_spelling,
        "arrays": [{"name": name, "dtype": a.dtype.name, "shape": list(a.shape),
                    "offset": a.offset, "nbytes": a.nbytes} for name, a in pf.arrays.items()],
    }


def _report_json(r: InspectReport) -> dict:
    files = []
    for f in r.files:
        d = {"index": f.index, "file": str(f.path.relative_to(r.root)) if r.root else str(f.path),
             "param": f.spec.module if f.spec else None,
             "leaf": f.spec.leaf if f.spec else None,
             "layer": f.spec.layer if f.spec else None,
             "scale_groups": f.spec.scale_groups if f.spec else None,
             "ok": f.ok, "problems": f.problems}
        if f.found:
            d.update({k: v for k, v in _file_json(f.found).items() if k != "path"})
        files.append(d)
    return {"root": str(r.root), "ok": r.ok, "config_source": r.config_source,
            "config": r.config.to_dict() if r.config else None,
            "missing": r.missing, "unexpected": r.unexpected, "files": files}


@cli.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--config", "config_path", type=click.Path(),
              help="Model config JSON (official field names); default: the checkpoint's "
                   "manifest, else inferred from the files.")
@click.option("--key-size", type=int, default=DEFAULT_KEY_SIZE, show_default=True,
              help="Head size assumed when inferring the config (not stored in the files).")
def inspect_cmd(path: str, as_json: bool, config_path: str | None, key_size: int) -> None:
    """List what a checkpoint file or folder holds, without unpickling anything.

    PATH is one tensorNNNNN_000 file, a checkpoint folder (the one holding
    ckpt-0/) or ckpt-0/ itself.  For a folder, also checks that every file
    of the layout is present and holds the parameter, dtypes and shapes
    expected at its position.  Exit 0 when all is well, 1 when files are
    missing or differ from the layout, 3 when a file is not a valid
    checkpoint file.
    """
    json_errors("document" if as_json else None)
    p = Path(path)
    if p.is_file() or (p.exists() and not p.is_dir()):  # a FIFO or device: the reader says so
        pf = inspect_file(p)
        if as_json:
            echo_json(_file_json(pf))
            return
        click.echo(f"{escape(str(p))}: {pf.kind}, {pf.size:,} bytes")
        for name, a in pf.arrays.items():
            click.echo(f"  {name:8s} {a.dtype.name:9s} {_shape(a.shape):22s} "
                       f"offset {a.offset:,}  {a.nbytes:,} bytes")
        return
    report = inspect_checkpoint(p, load_config_option(config_path), key_size)
    if as_json:
        echo_json(_report_json(report))
    else:
        _print_table(report)
    if not report.ok:
        bad_file = any(f.found is None for f in report.files)
        raise SystemExit(EXIT_BAD_CHECKPOINT if bad_file else EXIT_PROBLEMS)


def _print_table(r: InspectReport) -> None:
    cfg = r.config
    assert cfg is not None
    click.echo(f"{r.root}: {cfg.num_layers} layers, emb {cfg.emb_size}, vocab {cfg.vocab_size}, "
               f"{cfg.num_experts} experts (config {r.config_source})")
    click.echo(f"{'index':>5}  {'parameter':58s} {'kind':9s} {'dtype':15s} {'shape':26s} "
               f"{'G':>2} {'bytes':>15}")
    total = 0
    for f in r.files:
        spec = f.spec
        name = f"{spec.module}/{spec.leaf}" if spec else "?"
        if f.found is None:
            click.echo(f"{f.index:5d}  {name:58s} UNREADABLE: {escape_text('; '.join(f.problems))}")
            continue
        arrays = list(f.found.arrays.values())
        dtypes = "+".join(a.dtype.name for a in arrays)
        shapes = " ".join(_shape(a.shape) for a in arrays)
        g = str(spec.scale_groups) if spec and spec.scale_groups else "-"
        total += f.found.size
        click.echo(f"{f.index:5d}  {name:58s} {f.found.kind:9s} {dtypes:15s} {shapes:26s} "
                   f"{g:>2} {f.found.size:>15,}")
        for prob in f.problems:
            click.echo(f"       PROBLEM: {escape_text(prob)}")
    for m in r.missing:
        click.echo(f"MISSING: {m}")
    if r.missing:  # a partial copy (get --layers): say what it can still be used for
        from grokfetch.format.layout import complete_layers, layers_text

        params = [f.spec for f in r.files if f.spec is not None]
        done = complete_layers(param_list(cfg), {p.module for p in params})
        click.echo(f"layers present: {layers_text(done) if done else 'none complete'} "
                   f"of 0-{cfg.num_layers - 1}")
    for u in r.unexpected:
        click.echo(f"UNEXPECTED: {escape(u)}")
    status = "OK" if r.ok else f"{len(r.problems)} problem(s)"
    click.echo(f"{len(r.files)} files, {total:,} bytes: {status}")
