"""``grokfetch verify``: prove every byte of a checkpoint folder, b3sum-style.

Formats ``grokfetch.integrity.verify.verify``'s report: one line per file on stdout
(``ckpt-0/tensor00026_000: OK (blake3)``), the root of trust and a summary on
stderr, or one JSON document with ``--json``.  Exit 0 when every file was proven
by a root of trust, 1 when problems were found, 2 when it could not run, 4 when
the torrent cannot vouch, 6 when nothing is wrong but not everything was proven.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from grokfetch.cli.base import cli, echo_json, json_errors, stderr
from grokfetch.errors import EXIT_PROBLEMS, EXIT_UNPROVEN, PinRefused, UsageError
from grokfetch.format.manifest import MANIFEST_NAME
from grokfetch.integrity.verify import (
    OK,
    UNVERIFIED,
    VerifyReport,
    find_root,
    pin,
    verify,
)
from grokfetch.progress import ProgressFactory, bytes_bar
from grokfetch.units import format_bytes

if TYPE_CHECKING:
    from grokfetch.integrity.signing import SignedModel


def _summary(r: VerifyReport) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in r.summary.items() if n)
    n = r.bytes_hashed
    rate = f" ({format_bytes(n / r.seconds)}/s)" if r.seconds > 0 and n > 10**7 else ""
    return f"{len(r.files)} files: {counts}; {format_bytes(n)} hashed in {r.seconds:.1f} s{rate}"


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
    "--signature",
    "-s",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Check against this OMS signature (model.sig, from `grokfetch sign` or "
    "`model_signing sign`); needs --public-key or --certificate. Default with those: "
    "FOLDER/model.sig.",
)
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False),
    metavar="PUB.pem",
    help="The EC public key you trust to have signed FOLDER (key-signed signatures).",
)
@click.option(
    "--certificate",
    type=click.Path(dir_okay=False),
    metavar="ROOTS.pem",
    help="The root certificate(s) you trust (certificate-signed signatures).",
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
    help="Check every byte against the root of trust and, in the same read, write the pinned "
    "BLAKE3 manifest into the checkpoint root (FOLDER, or the folder holding it when FOLDER "
    "is ckpt-0/). A file that fails the root is named and nothing is pinned (exit 1).",
)
@click.option(
    "--trust-on-first-use",
    is_flag=True,
    help="With --pin: pin what is on disk even with no root of trust. The pin says so, and "
    "later runs count it as proven only with --accept-first-use.",
)
@click.option(
    "--accept-first-use",
    is_flag=True,
    help="Count a pin made on first use (--trust-on-first-use) as proven: exit 0 instead of 6.",
)
@click.option(
    "--changed-only",
    is_flag=True,
    help="Against the pinned manifest: re-hash only the files whose device, inode, size, "
    "mtime or ctime changed since a full verification proved them; report the others as "
    "UNCHANGED (not re-read). Proves nothing about their bytes: exit 6 unless "
    "--accept-unchanged. Updates the record (FOLDER/.grokfetch/verified.json).",
)
@click.option(
    "--accept-unchanged",
    is_flag=True,
    help="With --changed-only: count UNCHANGED files as proven (exit 0 when nothing else "
    "is wrong): you accept that unchanged metadata means unchanged bytes.",
)
@click.option(
    "--allow-unproven",
    is_flag=True,
    help="Exit 0 when nothing is wrong even if not every file was proven by a root of trust "
    "(UNVERIFIED files, no root, a manifest of unknown origin). Default: exit 6.",
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
    signature: str | None,
    public_key: str | None,
    certificate: str | None,
    quick: bool,
    layers: str | None,
    strict: bool,
    do_pin: bool,
    trust_on_first_use: bool,
    accept_first_use: bool,
    changed_only: bool,
    accept_unchanged: bool,
    allow_unproven: bool,
    jobs: int | None,
    as_json: bool,
    quiet: bool,
    seed: int | None,
) -> None:
    """Check that every file in FOLDER is intact, and say which bytes are not.

    \b
    Roots of trust, named by who vouches: --manifest and/or --torrent when given
    (a pin in FOLDER then adds nothing); else the pinned manifest in FOLDER, only
    if you pinned it on this machine (a copied one is "of unknown origin"); else a
    .torrent in FOLDER whose info-hash is a published one or the one you asked
    `grokfetch get` for; failing those, the packaged manifest of the model
    (grok-1: every size, SHA-256 for 34 files). Files no root covers still get
    size and structure checks, reported as UNVERIFIED, with how to fix that.

    \b
    With --signature (and --public-key or --certificate), an OMS signature is the
    root of trust instead: the bundle is checked first (envelope, key or
    certificate chain, signature, statement, root digest), then every file
    against the digest it signs; files it neither signs nor ignores fail.

    \b
    Exit codes: 0 every file proven by a root of trust named in the report,
    1 problems found, 2 could not run (bad arguments, unreadable, ambiguous or
    unsafe manifest), 4 the torrent is unreadable or is not the one the manifest
    names, 6 nothing wrong found but not every file proven (no root, UNVERIFIED
    files, a pin made on first use, UNCHANGED files of --changed-only;
    --allow-unproven makes this 0, as --accept-unchanged does for UNCHANGED), 7 the
    signature does not hold (another key, altered, untrusted certificate,
    malformed).
    """
    json_errors("document" if as_json else None)
    if trust_on_first_use and not do_pin:
        raise UsageError("--trust-on-first-use only makes sense with --pin")
    accept_first_use = accept_first_use or trust_on_first_use  # asked to trust it: accepted
    if do_pin and quick:
        raise UsageError("--pin needs a full verification; drop --quick")
    if do_pin and layers is not None:
        raise UsageError("--pin pins every file of the checkpoint; drop --layers")
    if accept_unchanged and not changed_only:
        raise UsageError("--accept-unchanged only makes sense with --changed-only")
    if changed_only and do_pin:
        raise UsageError("--pin reads every byte; drop --changed-only")

    def progress(total: int, desc: str) -> Any:  # tqdm on a terminal, else a NullBar
        return bytes_bar(total, desc)

    signed = _signed(folder, signature, public_key, certificate, quick, do_pin)

    def check() -> VerifyReport:
        return verify(folder, manifest=manifest, torrent=torrent, quick=quick, strict=strict,
                      jobs=jobs, progress=progress, seed=seed, layers=layers,
                      accept_first_use=accept_first_use, signature=signed,
                      changed_only=changed_only, accept_unchanged=accept_unchanged)

    pinned: Path | None = None
    refused: str | None = None
    if do_pin:
        report, pinned, refused = _pin(folder, manifest, torrent, trust_on_first_use,
                                       accept_first_use, jobs, progress, check)
    else:
        report = check()

    if as_json:
        doc = report.to_dict()
        doc["pinned_manifest"] = str(pinned) if pinned else None
        echo_json(doc)
    else:
        for f in report.files:
            if quiet and f.status == OK:
                continue
            click.echo(f.line())
        for note in report.notes:
            stderr(f"note: {note}")
        stderr(f"root of trust: {report.root_of_trust}")
        stderr(_summary(report))
        if report.advice:
            stderr(report.advice)
        if pinned:
            stderr(f"pinned: {pinned}")
    if refused:
        stderr(f"Error: {refused}")
        raise SystemExit(EXIT_PROBLEMS)
    if not report.ok:
        if not as_json:
            stderr("verify: problems found")
        raise SystemExit(EXIT_PROBLEMS)
    if not report.proven and not quick and not allow_unproven:
        stderr(f"verify: not proven: {report.unproven}")
        raise SystemExit(EXIT_UNPROVEN)


def _signed(folder: str, signature: str | None, public_key: str | None,
            certificate: str | None, quick: bool, do_pin: bool) -> SignedModel | None:
    """The verified OMS signature, when one is the root of trust (the seam to
    grokfetch.integrity.signing: it checks the bundle, verify checks the files)."""
    if signature is None and public_key is None and certificate is None:
        return None
    if public_key is None and certificate is None:
        raise UsageError("--signature needs --public-key PUB.pem or --certificate ROOTS.pem: "
                         "the key or root you trust")
    if public_key is not None and certificate is not None:
        raise UsageError("give --public-key or --certificate, not both")
    if do_pin:
        raise UsageError("--pin with --signature: the signature already is the root of trust")
    from grokfetch.integrity.signing import DEFAULT_SIGNATURE, verify_bundle

    sig = signature if signature is not None else str(Path(folder) / DEFAULT_SIGNATURE)
    signed = verify_bundle(sig, public_key=public_key, certificate=certificate)
    if quick and signed.serialization.method == "files":
        raise UsageError(f"{sig}: --quick samples shards, and this signature has whole-file "
                         "digests only: drop --quick")
    return signed


def _pin(
    folder: str,
    manifest: str | None,
    torrent: str | None,
    tofu: bool,
    accept_first_use: bool,
    jobs: int | None,
    progress: ProgressFactory,
    check: Callable[[], VerifyReport],
) -> tuple[VerifyReport, Path | None, str | None]:
    """Prove and pin in one pass: (report, pinned manifest, why it was refused)."""
    root = find_root(folder, manifest=manifest, torrent=torrent,
                     accept_first_use=accept_first_use)
    if root.kind == "pinned" and root.proven and not tofu:
        report = check()  # already pinned by you, from a root that proves it: just check it
        return report, (report.root / MANIFEST_NAME if report.ok else None), None
    by_root = root.kind in ("torrent", "manifest")
    if not by_root and not tofu:
        report = check()
        unverified = sum(f.status == UNVERIFIED for f in report.files)
        raise UsageError(
            f"not pinning {folder}: nothing vouches for its content ({unverified} file(s) "
            "UNVERIFIED); pass --torrent FILE (the published torrent), or "
            "--trust-on-first-use to pin it as is"
        )
    try:
        res = pin(
            folder,
            torrent=root.torrent if by_root else None,
            manifest=root.manifest if root.kind == "manifest" else None,
            first_use=tofu,
            jobs=jobs,
            progress=progress,
        )
    except PinRefused as e:
        return check(), None, str(e)  # the full report names every bad file and range
    report = res.report
    if tofu and report.unproven is not None:  # the user asked to trust first use
        report = replace(report, unproven=None)
    return report, res.path, None
