"""``grokfetch verify``: prove every byte of a checkpoint folder, b3sum-style.

Formats ``grokfetch.verify.verify``'s report: one line per file on stdout
(``ckpt-0/tensor00026_000: OK (blake3)``), the root of trust and a summary on
stderr, or one JSON document with ``--json``.  Exit 0 when all is well, 1 when
problems were found, 2 when it could not run, 4 when the torrent cannot vouch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from grokfetch.cli.base import cli, echo_json, json_errors, stderr
from grokfetch.errors import EXIT_PROBLEMS, UsageError
from grokfetch.progress import bytes_bar
from grokfetch.verify import OK, UNVERIFIED, ProgressFactory, VerifyReport, pin, verify


def _summary(r: VerifyReport) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in r.summary.items() if n)
    gb = r.bytes_hashed / 1e9
    rate = f" ({gb / r.seconds:.2f} GB/s)" if r.seconds > 0 and gb > 0.01 else ""
    return f"{len(r.files)} files: {counts}; {gb:.2f} GB hashed in {r.seconds:.1f} s{rate}"


@cli.command("verify")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--manifest",
    "-m",
    metavar="NAME|PATH",
    help="Check against this manifest (a packaged model name like grok-1, or a file).",
)
@click.option(
    "--torrent",
    "-t",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Check against this torrent's SHA-1 piece hashes (the published root of trust).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Sizes plus a sample of chunks (or pieces) per file: a fast sanity pass.",
)
@click.option(
    "--layers",
    metavar="SPEC",
    help="Only these decoder layers ('0-3,10') plus the embedding and final norm: what "
    "`grokfetch get --layers` fetched. Other files are not checked or reported.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Extra files and files whose content could not be verified are problems.",
)
@click.option(
    "--pin",
    "do_pin",
    is_flag=True,
    help="After a clean verification, write the pinned BLAKE3 manifest into the checkpoint "
    "root (FOLDER, or the folder holding it when FOLDER is ckpt-0/).",
)
@click.option(
    "--trust-on-first-use",
    is_flag=True,
    help="With --pin: pin whatever is on disk even with no root of trust.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    metavar="N",
    help="Files hashed at once (default: one per CPU).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option("--quiet", "-q", is_flag=True, help="Hide the OK lines; show only problems.")
@click.option("--seed", type=int, hidden=True, help="Fix --quick's random sample (tests).")
def verify_cmd(
    folder: str,
    manifest: str | None,
    torrent: str | None,
    quick: bool,
    layers: str | None,
    strict: bool,
    do_pin: bool,
    trust_on_first_use: bool,
    jobs: int | None,
    as_json: bool,
    quiet: bool,
    seed: int | None,
) -> None:
    """Check that every file in FOLDER is intact, and say which bytes are not.

    \b
    Roots of trust, in order: --manifest; the pinned manifest in FOLDER
    (grokfetch-manifest.json); the torrent (--torrent, or the .torrent that
    `grokfetch get` saved); failing those, the packaged manifest of the model
    (grok-1: every size, SHA-256 for 34 files). Files no hash covers still get
    size and structure checks, reported as UNVERIFIED, with how to fix that.

    \b
    Exit codes: 0 all good, 1 problems found, 2 could not run (bad arguments,
    unreadable or unsafe manifest), 4 the torrent is unreadable or is not the
    one the manifest names.
    """
    json_errors("document" if as_json else None)
    if trust_on_first_use and not do_pin:
        raise UsageError("--trust-on-first-use only makes sense with --pin")
    if do_pin and quick:
        raise UsageError("--pin needs a full verification; drop --quick")
    if do_pin and layers is not None:
        raise UsageError("--pin pins every file of the checkpoint; drop --layers")

    def progress(total: int, desc: str) -> Any:  # tqdm on a terminal, else a NullBar
        return bytes_bar(total, desc)

    report = verify(
        folder,
        manifest=manifest,
        torrent=torrent,
        quick=quick,
        strict=strict,
        jobs=jobs,
        progress=progress,
        seed=seed,
        layers=layers,
    )
    pinned = None
    if do_pin:
        pinned = _pin(folder, report, trust_on_first_use, jobs, progress)

    if as_json:
        doc = report.to_dict()
        doc["pinned_manifest"] = str(pinned) if pinned else None
        echo_json(doc)
    else:
        for f in report.files:
            if quiet and f.status == OK:
                continue
            click.echo(f.line())
        stderr(f"root of trust: {report.root_of_trust}")
        stderr(_summary(report))
        if report.advice:
            stderr(report.advice)
        if pinned:
            stderr(f"pinned: {pinned}")
        if not report.ok:
            stderr("verify: problems found")
    if not report.ok:
        raise SystemExit(EXIT_PROBLEMS)


def _pin(
    folder: str, report: VerifyReport, tofu: bool, jobs: int | None, progress: ProgressFactory
) -> Path | None:
    """Pin after verification, when something vouched for every file (or the user says so)."""
    if not report.ok:
        stderr("not pinning: verification found problems")
        return None
    if not report.content_proven and not tofu:
        unverified = sum(f.status == UNVERIFIED for f in report.files)
        raise UsageError(
            f"not pinning: {unverified} file(s) have nothing vouching for their content; pass "
            "--torrent FILE (the published torrent), or --trust-on-first-use to pin them as is"
        )
    if report.trust == "pinned" and not tofu:
        return report.root / "grokfetch-manifest.json"  # already pinned and just proven
    return pin(folder, base=report.manifest, torrent=report.torrent, jobs=jobs, progress=progress)
