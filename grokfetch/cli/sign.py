"""``grokfetch sign``: write an OpenSSF Model Signing (OMS v1.0) signature of a folder.

Formats ``grokfetch.integrity.signing.sign_folder``'s result; ``model_signing verify key``
(or ``verify certificate``) and ``grokfetch verify --signature`` both accept
what it writes.
"""

from __future__ import annotations

from typing import Any

import click

from grokfetch.cli.base import cli, echo_json, stderr
from grokfetch.integrity.signing import DEFAULT_SIGNATURE, sign_folder
from grokfetch.progress import bytes_bar
from grokfetch.units import format_bytes


@cli.command("sign")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.option("--key", "-k", required=True, type=click.Path(dir_okay=False), metavar="PRIVATE.pem",
              help="EC private key (P-256, P-384 or P-521), PEM.")
@click.option("--signature", "-s", type=click.Path(dir_okay=False), metavar="FILE",
              help=f"Where to write the signature (default: FOLDER/{DEFAULT_SIGNATURE}).")
@click.option("--certificate", type=click.Path(dir_okay=False), metavar="CHAIN.pem",
              help="Sign with a certificate: PEM file with the signing certificate (for --key) "
                   "first, then its issuers. Without it the signature names the key.")
@click.option("--hash", "hash_type", type=click.Choice(["sha256", "blake3"]), default="sha256",
              show_default=True,
              help="Digest of each file. sha256: every OMS verifier, the model_signing CLI "
                   "included; blake3: faster, verified by grokfetch and model_signing's API.")
@click.option("--shard-size", type=click.IntRange(min=1), metavar="BYTES",
              help="Sign byte ranges path:start:end of this size instead of whole files "
                   "(sha256 only; model_signing 1.1.1 cannot verify shard signatures).")
@click.option("--ignore-path", "ignore_paths", multiple=True, metavar="PATH",
              help="Leave this path (relative to FOLDER, a file or folder) out of the signature; "
                   "repeatable. grokfetch's own files are always left out.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), metavar="N",
              help="Files (or shards) hashed at once (default: one per CPU).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar or summary: only the signature's path, on stdout.")
def sign_cmd(folder: str, key: str, signature: str | None, certificate: str | None,
             hash_type: str, shard_size: int | None, ignore_paths: tuple[str, ...],
             jobs: int | None, as_json: bool, quiet: bool) -> None:
    """Sign every file in FOLDER with an OMS v1.0 signature (a Sigstore bundle), offline.

    \b
    The signature lists the digest of every file; check it with
      grokfetch verify FOLDER --signature FOLDER/model.sig --public-key PUB.pem
      model_signing verify key FOLDER --signature FOLDER/model.sig --public_key PUB.pem
    Left out of the signed set, and named in its ignore_paths: .git, .gitattributes,
    .github, .gitignore, grokfetch-manifest.json, .grokfetch/, repack's journal, the
    .torrent files at the top of FOLDER, the signature itself, and --ignore-path.

    \b
    Exit codes: 0 signed, 2 could not run (bad key, symbolic link or special file in
    FOLDER, bad arguments), 5 the signature could not be written.
    """

    def progress(total: int, desc: str) -> Any:
        return bytes_bar(total, desc, enabled=None if not quiet else False)

    r = sign_folder(folder, key, signature=signature, certificate=certificate,
                    hash_type=hash_type, shard_size=shard_size, ignore_paths=ignore_paths,
                    jobs=jobs, progress=progress)
    if as_json:
        echo_json(r.to_dict())
        return
    click.echo(str(r.signature))  # stdout: the signature's path, for scripts
    if not quiet:
        s = r.serialization
        how = s.hash_type + (f", shards of {s.shard_size} bytes" if s.method == "shards" else "")
        rate = f" ({format_bytes(r.bytes_hashed / r.seconds)}/s)" if r.seconds > 0 else ""
        stderr(f"signed {folder}: {r.resources} digests ({how}), {format_bytes(r.bytes_hashed)} "
               f"in {r.seconds:.1f} s{rate}")
        stderr(f"signer: {r.signer}")
        stderr(f"left out: {', '.join(s.ignore_paths)}")
