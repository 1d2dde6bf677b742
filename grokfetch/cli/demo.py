"""``grokfetch demo``: the whole pipeline on a small synthetic checkpoint, for real."""

from __future__ import annotations

import click

from grokfetch.cli.base import cli, echo_json, json_errors
from grokfetch.demo import DemoReport, Stage, run_demo
from grokfetch.errors import EXIT_PROBLEMS
from grokfetch.fetch.torrent import Progress
from grokfetch.progress import bytes_bar
from grokfetch.units import format_bytes


def _size(nbytes: int) -> str:
    return format_bytes(nbytes) if nbytes else "-"  # a stage that moves no data


def print_summary(report: DemoReport) -> None:
    click.echo("")
    click.echo(f"{'stage':44s} {'result':6s} {'time':>7s} {'size':>9s} {'MB/s':>8s}  detail")
    for s in report.stages:
        mbs = f"{s.throughput:8.1f}" if s.throughput is not None else f"{'-':>8s}"
        click.echo(f"{s.name:44s} {'PASS' if s.passed else 'FAIL':6s} {s.seconds:6.2f}s "
                   f"{_size(s.nbytes):>9s} {mbs}  {s.detail}")
    total = sum(s.seconds for s in report.stages)
    verdict = "every stage passed" if report.passed else "FAILED"
    click.echo(f"\n{verdict}: {report.bytes_synthesized:,} bytes synthesized, "
               f"{report.bytes_verified:,} bytes verified by torrent pieces, {total:.1f}s; "
               f"seeder {'stopped' if report.seeder_stopped else 'STILL RUNNING'}")
    if report.kept:
        click.echo(f"kept in {report.workdir}")


@cli.command("demo")
@click.option("--keep", type=click.Path(file_okay=False),
              help="Keep everything in this folder (default: a temp folder, removed at the end).")
@click.option("--layers", "num_layers", type=click.IntRange(min=1),
              help="Decoder layers of the synthetic checkpoint (default 12).")
@click.option("--json", "as_json", is_flag=True, help="The summary as one JSON document.")
def demo_cmd(keep: str | None, num_layers: int | None, as_json: bool) -> None:
    """Run the whole pipeline on a small synthetic checkpoint, on 127.0.0.1 only.

    Synthesizes a checkpoint in the real Grok-1 format, makes its torrent,
    starts a seeder (a separate process), then: get by magnet with a peer
    hint, verify against the torrent pieces and the pinned manifest, repack
    to safetensors, verify the repacked folder, smoke-test the original and
    compare it with the repacked weights.  Prints one summary table.  Exit 0
    when every stage passed, 1 otherwise; Ctrl-C stops cleanly (130).
    """
    json_errors("document" if as_json else None)
    bar = None

    def on_stage(s: Stage) -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None
        if not as_json:
            click.echo(f"[{'ok' if s.passed else 'FAIL'}] {s.name} ({s.seconds:.2f}s): {s.detail}",
                       err=True)

    def on_progress(p: Progress) -> None:
        nonlocal bar
        if as_json or p.wanted <= 0:
            return
        if bar is None:
            bar = bytes_bar(p.wanted, "get")
        bar.update(p.wanted_done - bar.n)
        bar.set_postfix_str(f"{p.peers} peers, {p.seeds} seeds, {p.state}", refresh=False)

    try:
        report = run_demo(keep=keep, num_layers=num_layers, on_stage=on_stage,
                          on_progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        echo_json(report.to_dict())
    else:
        print_summary(report)
    if not report.passed:
        raise SystemExit(EXIT_PROBLEMS)
