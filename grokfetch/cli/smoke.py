"""``grokfetch smoke``: run the numpy reference forward pass and check the numbers are sane."""

from __future__ import annotations

import functools

import click

from grokfetch.cli.base import cli, echo_json, json_errors
from grokfetch.cli.inspect import load_config_option
from grokfetch.errors import EXIT_PROBLEMS, UsageError
from grokfetch.model.smoke import (
    Comparison,
    SmokeReport,
    check_save_path,
    parse_tokens,
    run_smoke,
    save_outputs,
    smoke_compare,
)
from grokfetch.model.weights import open_weights
from grokfetch.progress import bar

BAR_WIDTH = 30


_CONFIG_SOURCES = {
    "explicit": "from --config",
    "manifest": "from the manifest",
    "config.json": "from config.json",
}


def _header(r: SmokeReport) -> str:
    cfg = r.config
    what = f"all {cfg.num_layers} layers" if r.mode == "all" else f"layer {r.layers[0]}"
    if r.tokens:
        feed = f"{len(r.tokens)} tokens {list(r.tokens)}"
    else:
        feed = f"--input ({r.outputs['h_in'].shape[0]} positions)"
    source = _CONFIG_SOURCES.get(
        r.config_source,
        f"inferred from the file shapes, key_size {cfg.key_size} assumed (the files do not "
        "record it; pass --config if it is wrong)",
    )
    return (
        f"{r.path} ({r.format}; {cfg.num_layers} layers, emb {cfg.emb_size}, "
        f"{cfg.num_q_heads}x{cfg.key_size} query heads, {cfg.num_experts} experts; config "
        f"{source})\n{what} on {feed}: {r.seconds:.2f} s"
    )


def _histogram(r: SmokeReport) -> list[str]:
    """One bar chart for a single layer; a table (layer x expert) for the whole model."""
    if len(r.router_counts) == 1:
        ((layer, counts),) = r.router_counts.items()
        top = max(counts) or 1
        lines = [f"router histogram, layer {layer} (token picks per expert):"]
        for e, c in enumerate(counts):
            lines.append(f"  expert {e:>2}  {'#' * round(BAR_WIDTH * c / top):<{BAR_WIDTH}} {c}")
        return lines
    n = r.config.num_experts
    lines = [
        "router histogram (token picks per expert):",
        "  layer " + " ".join(f"{'e' + str(e):>4}" for e in range(n)),
    ]
    for layer, counts in r.router_counts.items():
        lines.append(f"  {layer:>5} " + " ".join(f"{c:>4}" for c in counts))
    return lines


def _print_report(r: SmokeReport) -> None:
    click.echo(_header(r))
    for c in r.checks:
        click.echo(f"  {'PASS' if c.passed else 'FAIL'}  {c.title}: {c.figure}")
        for f in c.failures:
            click.echo(f"        {f}")
    for line in _histogram(r):
        click.echo(line)
    if r.passed:
        click.echo(f"smoke: all {len(r.checks)} checks passed")
    else:
        names = ", ".join(c.name for c in r.failed)
        click.echo(f"smoke: FAILED {len(r.failed)} of {len(r.checks)} checks ({names})")


def _print_comparison(c: Comparison) -> None:
    click.echo(f"compare: {c.a} vs {c.b}")
    for d in c.diffs:
        extra = ""
        if d.min_cosine is not None:
            extra = f"  min cosine {d.min_cosine:.6f}  max rel L2 {d.max_rel_l2:.3g}"
        same = "identical" if d.identical else f"max |diff| {d.max_abs_diff:.3g}"
        click.echo(f"  {d.name:<14} {same}{extra}")
    click.echo(f"  expert choices {'identical' if c.experts_agree else 'DIFFER'}")
    w = c.weights
    click.echo(
        f"  weights ({w.tensors} tensors) "
        + ("identical" if w.identical else f"max relative difference {w.max_rel:.3g} ({w.worst})")
    )
    verdict = "PASS" if c.passed else "FAIL"
    largest = c.largest
    click.echo(
        f"  {verdict}  {c.rule}; largest difference {largest.max_abs_diff:.3g} ({largest.name})"
    )


@cli.command("smoke")
@click.argument("ckpt", type=click.Path(exists=True))
@click.option(
    "--layer",
    type=int,
    metavar="N",
    default=None,
    help="Run decoder layer N alone on the scaled embeddings (default 0); needs only "
    "the embedding and that layer's files.",
)
@click.option("--all", "all_layers", is_flag=True, help="Run the whole model, up to the logits.")
@click.option(
    "--tokens", metavar="IDS", help="Comma-separated token ids (default: 8 spread-out ids)."
)
@click.option(
    "--input",
    "input_path",
    metavar="HIDDEN.npy",
    type=click.Path(exists=True, dir_okay=False),
    help="With --layer: feed these [T, emb] hidden states (.npy) to the layer.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Model config JSON (official field names) for checkpoints without a manifest.",
)
@click.option(
    "--save",
    "save_path",
    metavar="OUT.npz",
    type=click.Path(dir_okay=False),
    help="Write the inputs and outputs to an .npz (the golden set's key names).",
)
@click.option(
    "--compare",
    "other",
    metavar="OTHER",
    type=click.Path(exists=True),
    help="Also run OTHER (e.g. a repack) on the same input and report the largest difference.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def smoke_cmd(
    ckpt: str,
    layer: int | None,
    all_layers: bool,
    tokens: str | None,
    input_path: str | None,
    config_path: str | None,
    save_path: str | None,
    other: str | None,
    as_json: bool,
) -> None:
    """Run the numpy reference forward pass on CKPT and check the results are sane.

    CKPT is an original checkpoint folder, a per-tensor repack or an SGLang
    repack.  Exit 0 when every check passes, 1 when one fails.
    """
    json_errors("document" if as_json else None)
    if all_layers and layer is not None:
        raise UsageError("--layer and --all exclude each other")
    if input_path and all_layers:
        raise UsageError("--input feeds one layer; it cannot be combined with --all")
    if input_path and tokens is not None:
        raise UsageError("--input replaces the tokens' embeddings; drop --tokens")
    config = load_config_option(config_path)
    if save_path:
        check_save_path(save_path)  # before the run, not after it
    token_list = parse_tokens(tokens) if tokens is not None else None
    run = functools.partial(
        run_smoke,
        layer=0 if layer is None else layer,
        all_layers=all_layers,
        tokens=token_list,
        hidden=input_path,
        # layers done, on a terminal or as log lines (--all at full size: 30-55 minutes)
        progress=lambda total, desc: bar(total, desc, False if as_json else None, unit="layer"),
    )
    other_report = comparison = None
    if other:
        report, other_report, comparison = smoke_compare(ckpt, other, run, config=config)
    else:
        with open_weights(ckpt, config) as weights:
            report = run(weights, ckpt)
    if save_path:
        save_outputs(report, save_path)
    ok = (
        report.passed
        and (other_report is None or other_report.passed)
        and (comparison is None or comparison.passed)
    )
    if as_json:
        if comparison is None:
            echo_json(report.to_dict())
        else:
            assert other_report is not None
            echo_json(
                {
                    "passed": ok,
                    "reports": [report.to_dict(), other_report.to_dict()],
                    "compare": comparison.to_dict(),
                }
            )
    else:
        _print_report(report)
        if other_report is not None and comparison is not None:
            click.echo()
            _print_report(other_report)
            click.echo()
            _print_comparison(comparison)
        if save_path:
            click.echo(f"saved {save_path}")
    if not ok:
        raise SystemExit(EXIT_PROBLEMS)
