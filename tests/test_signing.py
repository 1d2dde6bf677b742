"""OMS signatures: ``grokfetch sign`` and ``grokfetch verify --signature`` against
model_signing, the reference implementation, both ways.

What a user relies on:

* a grokfetch signature passes ``model_signing verify key`` (and ``verify
  certificate``) for the original checkpoint and every repack layout, with
  grokfetch's own files in the folder, even ones that appear after signing;
* a model_signing signature passes ``grokfetch verify --signature``;
* a flipped byte, a missing file, an extra file, a wrong key and a tampered
  statement fail both tools, and grokfetch says which file or why in one line,
  with exit 1 (the files are wrong) or 6 (the signature does not hold).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import by_path, flip_byte

from grokfetch.cli import cli
from grokfetch.errors import EXIT_PROBLEMS, EXIT_SIGNATURE, EXIT_USAGE, SignatureError
from grokfetch.format.manifest import MANIFEST_NAME
from grokfetch.integrity.signing import key_hint, load_public_key, sign_folder, verify_bundle
from grokfetch.integrity.verify import verify
from grokfetch.repack.run import repack
from tests.oms_helpers import (
    CURVES,
    ms_cli,
    ms_sign,
    ms_verify,
    statement_of,
    with_statement,
    write_key_pair,
    write_pki,
)

BIG = "ckpt-0/tensor00000_000"


def gf(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return write_key_pair(d, "signer"), write_key_pair(d, "other")


@pytest.fixture
def ckpt(copy_ckpt):
    """A writable mini checkpoint with grokfetch's own files in it, as `get` leaves them."""
    root = copy_ckpt()
    (root / ".grokfetch").mkdir()
    (root / ".grokfetch" / "0123abcd.resume").write_bytes(b"d8:info-hash20:...e")
    (root / ".grokfetch" / "0123abcd.parts").write_bytes(bytes(100))
    (root / "ckpt-0.torrent").write_bytes(b"d4:infod4:name6:ckpt-0ee")
    return root


def hint_of(pub: Path) -> str:
    return key_hint(load_public_key(pub))


# -- grokfetch signs, model_signing verifies ---------------------------------------------


def test_a_grokfetch_signature_of_a_checkpoint_passes_model_signing_verify_key(ckpt, keys):
    me, _ = keys
    r = gf("sign", str(ckpt), "--key", str(me.private), "--quiet")
    assert r.exit_code == 0, r.output
    sig = ckpt / "model.sig"
    assert r.stdout.strip() == str(sig)
    # grokfetch's own files appear or change after signing: none is part of the signature
    (ckpt / MANIFEST_NAME).write_text((ckpt / MANIFEST_NAME).read_text() + "\n")
    (ckpt / ".grokfetch" / "lock").write_bytes(b"")
    (ckpt / ".grokfetch-repack-journal.jsonl").write_text("{}\n")
    cli_run = ms_cli("verify", "key", str(ckpt), "--signature", str(sig),
                     "--public_key", str(me.public))
    assert cli_run.returncode == 0, cli_run.stderr + cli_run.stdout
    assert "Verification succeeded" in cli_run.stdout
    ser = statement_of(sig)["predicate"]["serialization"]
    assert {MANIFEST_NAME, ".grokfetch", ".grokfetch-repack-journal.jsonl", "ckpt-0.torrent",
            "model.sig", ".git"} <= set(ser["ignore_paths"])
    assert ser["method"] == "files" and ser["hash_type"] == "sha256"


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_every_curve_interoperates_both_ways(tmp_path, curve, mini_ckpt):
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    kp = write_key_pair(tmp_path, curve=curve)
    sign_folder(folder, kp.private, signature=tmp_path / "gf.sig")
    assert ms_verify(folder, tmp_path / "gf.sig", public_key=kp.public) is None
    ms_sign(folder, tmp_path / "ms.sig", key=kp.private)
    signed = verify_bundle(tmp_path / "ms.sig", public_key=kp.public)
    assert signed.signer == f"key {hint_of(kp.public)[:16]}"
    report = verify(folder, signature=signed)
    assert report.ok and report.content_proven and report.proven
    assert len(report.files) == 146
    assert {f.vouched_by for f in report.files} == {f"signature:{signed.signer}"}
    assert {f.hashes for f in report.files} == {("sha256",)}


def test_blake3_signatures_interoperate_with_model_signings_api(tmp_path, mini_ckpt, keys):
    me, _ = keys
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt, folder)
    sign_folder(folder, me.private, hash_type="blake3")
    assert statement_of(folder / "model.sig")["predicate"]["serialization"]["hash_type"] == \
        "blake3"
    assert ms_verify(folder, folder / "model.sig", public_key=me.public) is None
    ms_sign(folder, tmp_path / "ms.sig", key=me.private, hash_type="blake3")
    r = gf("verify", str(folder), "--signature", str(tmp_path / "ms.sig"),
           "--public-key", str(me.public))
    assert r.exit_code == 0, r.output
    assert f"{BIG}: OK (blake3)" in r.stdout.splitlines()


@pytest.mark.parametrize("layout", ["per-tensor", "sglang"])
def test_every_repack_layout_signs_and_passes_both_verifiers(tmp_path, mini_ckpt, keys, layout):
    me, _ = keys
    dest = tmp_path / layout
    repack(mini_ckpt, dest, layout=layout, shard_size=1_000_000, chunk_size=64 * 1024)
    assert (dest / MANIFEST_NAME).is_file()
    r = gf("sign", str(dest), "--key", str(me.private), "--quiet")
    assert r.exit_code == 0, r.output
    assert ms_verify(dest, dest / "model.sig", public_key=me.public) is None
    r = gf("verify", str(dest), "--public-key", str(me.public))  # default: DEST/model.sig
    assert r.exit_code == 0, r.output
    assert f"signed by key {hint_of(me.public)[:16]}" in r.stderr
    names = {line.split(":")[0] for line in r.stdout.splitlines()}
    assert MANIFEST_NAME not in names and "model.sig" not in names
    if layout == "sglang":
        assert {"config.json", "model.safetensors.index.json"} <= names


# -- model_signing signs, grokfetch verifies ---------------------------------------------


def test_a_model_signing_cli_signature_passes_grokfetch_verify(tmp_path, mini_ckpt, keys):
    me, _ = keys
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    sig = folder / "model.sig"
    run = ms_cli("sign", "key", str(folder), "--signature", str(sig),
                 "--private_key", str(me.private))
    assert run.returncode == 0, run.stderr
    r = gf("verify", str(folder), "--signature", str(sig), "--public-key", str(me.public),
           "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["trust"] == "signature" and doc["ok"] is True
    assert doc["signature"]["signer"] == f"key {hint_of(me.public)[:16]}"
    assert doc["signature"]["key_hint"] == hint_of(me.public)
    assert doc["summary"]["OK"] == 146 and doc["summary"]["EXTRA"] == 0


# -- damage: both tools refuse, grokfetch names the file or the reason --------------------


def _flip(folder: Path, sig: Path, other: Path) -> None:
    flip_byte(folder / BIG, 1234)


def _missing(folder: Path, sig: Path, other: Path) -> None:
    (folder / "ckpt-0/tensor00009_000").unlink()


def _extra(folder: Path, sig: Path, other: Path) -> None:
    (folder / "ckpt-0" / "notes.txt").write_text("added after signing\n")


def _tampered(folder: Path, sig: Path, other: Path) -> None:
    stmt = statement_of(sig)
    stmt["predicate"]["resources"] = stmt["predicate"]["resources"][1:]  # drop one file
    with_statement(sig, stmt)


DAMAGE = {
    "flipped byte": (_flip, EXIT_PROBLEMS, f"{BIG}: FAILED (sha256 hash mismatch)"),
    "missing file": (_missing, EXIT_PROBLEMS, "ckpt-0/tensor00009_000: MISSING (no such file)"),
    "extra file": (_extra, EXIT_PROBLEMS, "ckpt-0/notes.txt: EXTRA (not signed)"),
    "wrong key": (None, EXIT_SIGNATURE, "Error: {sig}: signed by key {mine}..., not by {other} "
                  "(key {theirs}...)"),
    "tampered statement": (_tampered, EXIT_SIGNATURE, "Error: {sig}: the signature does not "
                           "verify with key {mine}: the statement was altered after signing, "
                           "or another key signed it"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_fails_both_verifiers_and_grokfetch_says_what(ckpt, keys, damage):
    me, other = keys
    how, code, line = DAMAGE[damage]
    sig = ckpt / "model.sig"
    sign_folder(ckpt, me.private)
    assert ms_verify(ckpt, sig, public_key=me.public) is None  # sound before the damage
    if how is not None:
        how(ckpt, sig, other.public)
    pub = other.public if damage == "wrong key" else me.public
    verdict = ms_verify(ckpt, sig, public_key=pub)
    assert verdict is not None, f"model_signing accepted the {damage}"
    r = gf("verify", str(ckpt), "--signature", str(sig), "--public-key", str(pub), "--quiet")
    assert r.exit_code == code, r.output
    want = line.format(sig=sig, mine=hint_of(me.public)[:16], other=other.public,
                       theirs=hint_of(other.public)[:16])
    if code == EXIT_PROBLEMS:
        assert r.stdout.splitlines() == [want]
        assert "verify: problems found" in r.stderr
    else:
        assert r.stderr.strip() == want and r.stdout == ""


def test_a_re_signed_statement_whose_subject_digest_lies_fails_both(tmp_path, mini_ckpt, keys):
    me, _ = keys
    from grokfetch.integrity.signing import load_private_key, make_bundle

    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    sig = tmp_path / "model.sig"
    sign_folder(folder, me.private, signature=sig)
    stmt = statement_of(sig)
    stmt["subject"][0]["digest"]["sha256"] = "00" * 32
    sig.write_text(json.dumps(make_bundle(stmt, load_private_key(me.private))))
    assert "inconsistent" in (ms_verify(folder, sig, public_key=me.public) or "")
    r = gf("verify", str(folder), "--signature", str(sig), "--public-key", str(me.public))
    assert r.exit_code == EXIT_SIGNATURE
    assert "statement is inconsistent: subject digest 0000" in r.stderr


# -- certificates --------------------------------------------------------------------------


def test_certificate_signatures_interoperate_and_an_unknown_root_is_refused(tmp_path, mini_ckpt):
    pki, stranger = write_pki(tmp_path / "pki", "team"), write_pki(tmp_path / "other", "other")
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    sig = tmp_path / "model.sig"
    r = gf("sign", str(folder), "--key", str(pki.key), "--certificate", str(pki.chain),
           "--signature", str(sig), "--quiet")
    assert r.exit_code == 0, r.output
    run = ms_cli("verify", "certificate", str(folder), "--signature", str(sig),
                 "--certificate_chain", str(pki.roots))
    assert run.returncode == 0, run.stderr + run.stdout
    r = gf("verify", str(folder), "--signature", str(sig), "--certificate", str(pki.roots))
    assert r.exit_code == 0, r.output
    assert "signed by certificate CN=team signer (root CN=team root)" in r.stderr
    r = gf("verify", str(folder), "--signature", str(sig), "--certificate", str(stranger.roots))
    assert r.exit_code == EXIT_SIGNATURE
    assert "certificate CN=team intermediate does not chain to a trusted root" in r.stderr
    assert ms_verify(folder, sig, roots=stranger.roots) is not None
    # and the other way: model_signing's certificate signature, grokfetch's check
    ms_sign(folder, tmp_path / "ms.sig", key=pki.key, pki=pki)
    signed = verify_bundle(tmp_path / "ms.sig", certificate=pki.roots)
    assert signed.method == "certificate" and verify(folder, signature=signed).ok


def test_a_key_signature_checked_as_a_certificate_one_says_so(tmp_path, mini_ckpt, keys):
    me, _ = keys
    pki = write_pki(tmp_path / "pki")
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    sign_folder(folder, me.private)
    with pytest.raises(SignatureError, match="signed with a key, not a certificate"):
        verify_bundle(folder / "model.sig", certificate=pki.roots)
    sign_folder(folder, pki.key, certificate=pki.chain)
    with pytest.raises(SignatureError, match="signed with a certificate, not a key"):
        verify_bundle(folder / "model.sig", public_key=me.public)


# -- shards --------------------------------------------------------------------------------


def test_shard_signatures_locate_the_damage_to_a_shard(tmp_path, mini_ckpt, keys):
    me, _ = keys
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    size = (folder / "tensor00000_000").stat().st_size
    r = gf("sign", str(folder), "--key", str(me.private), "--shard-size", "100000", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["serialization"]["method"] == "shards"
    names = [x["name"] for x in statement_of(folder / "model.sig")["predicate"]["resources"]]
    assert "tensor00000_000:0:100000" in names and names == sorted(names)
    flip_byte(folder / "tensor00000_000", 150_000)
    r = gf("verify", str(folder), "--public-key", str(me.public), "--quiet")
    assert r.exit_code == EXIT_PROBLEMS
    n = -(-size // 100_000)
    assert r.stdout.splitlines() == [
        f"tensor00000_000: FAILED (hash mismatch in bytes 100000-199999 (shard 1 of {n}))"]


def test_model_signing_shard_signatures_verify_here_though_not_in_model_signing(
        tmp_path, mini_ckpt, keys):
    """model_signing 1.1.1 writes shard digests as 'sha256-sharded-N' with a float
    shard_size and then cannot verify its own signature; grokfetch reads it."""
    me, _ = keys
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    sig = tmp_path / "ms.sig"
    ms_sign(folder, sig, key=me.private, shard_size=300_000)
    assert ms_verify(folder, sig, public_key=me.public) is not None
    signed = verify_bundle(sig, public_key=me.public)
    assert signed.serialization.shard_size == 300_000
    assert verify(folder, signature=signed).ok
    # and grokfetch's own spec-conformant shard signature is refused by model_signing 1.1.1
    sign_folder(folder, me.private, signature=tmp_path / "gf.sig", shard_size=300_000)
    assert ms_verify(folder, tmp_path / "gf.sig", public_key=me.public) is not None


# -- refusals ------------------------------------------------------------------------------


def test_a_symbolic_link_is_refused_when_signing_and_when_verifying(tmp_path, mini_ckpt, keys):
    me, _ = keys
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    (folder / "link").symlink_to(folder / "tensor00001_000")
    r = gf("sign", str(folder), "--key", str(me.private))
    assert r.exit_code == EXIT_USAGE
    assert r.stderr.strip().startswith(f"Error: {folder / 'link'}: a symbolic link")
    (folder / "link").unlink()
    sign_folder(folder, me.private)
    target = tmp_path / "elsewhere"
    shutil.move(folder / "tensor00001_000", target)
    (folder / "tensor00001_000").symlink_to(target)  # same bytes, through a link
    report = verify(folder, signature=verify_bundle(folder / "model.sig", public_key=me.public))
    got = by_path(report)["tensor00001_000"]
    assert got.status == "FAILED" and "symbolic link" in got.detail
    assert ms_verify(folder, folder / "model.sig", public_key=me.public) is not None


def test_bad_arguments_and_keys_are_one_line_with_a_documented_exit_code(
        tmp_path, mini_ckpt, keys):
    me, _ = keys
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    sig = str(folder / "model.sig")
    rsa = tmp_path / "rsa.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_mod

    rsa.write_bytes(rsa_mod.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    cases = [
        (["sign", str(folder), "--key", str(me.private), "--hash", "blake3",
          "--shard-size", "1000"], EXIT_USAGE, "model_signing verifies BLAKE3 by whole files"),
        (["sign", str(folder), "--key", str(me.public)], EXIT_USAGE, "not a PEM private key"),
        (["sign", str(folder), "--key", str(rsa)], EXIT_USAGE, "not an elliptic-curve key"),
        (["verify", str(folder), "--signature", sig], EXIT_USAGE,
         "needs --public-key PUB.pem or --certificate"),
        (["verify", str(folder), "--public-key", str(me.public)], EXIT_USAGE,
         "cannot read the signature"),
    ]
    for args, code, words in cases:
        r = gf(*args)
        assert r.exit_code == code and words in r.stderr, (args, r.output)
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (folder / "model.sig").exists()  # nothing half-written by the refused runs
    (folder / "model.sig").write_text("not json")
    r = gf("verify", str(folder), "--public-key", str(me.public))
    assert r.exit_code == EXIT_SIGNATURE and "not a JSON signature bundle" in r.stderr


def test_quick_samples_signed_shards_and_is_refused_for_whole_file_digests(
        tmp_path, mini_ckpt, keys):
    me, _ = keys
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    sign_folder(folder, me.private)
    r = gf("verify", str(folder), "--public-key", str(me.public), "--quick")
    assert r.exit_code == EXIT_USAGE and "whole-file digests only: drop --quick" in r.stderr
    sign_folder(folder, me.private, shard_size=50_000)
    r = gf("verify", str(folder), "--public-key", str(me.public), "--quick", "--json")
    assert r.exit_code == 0, r.output
    big = next(f for f in json.loads(r.stdout)["files"] if f["path"] == "tensor00000_000")
    assert big["detail"].startswith("quick: size and 2 of 6 chunks (sha256)")


def test_a_signed_and_pinned_checkpoint_still_passes_a_strict_verify_against_its_pin(
        ckpt, keys):
    me, _ = keys
    sign_folder(ckpt, me.private)
    r = gf("verify", str(ckpt), "--strict", "--quiet")  # the pinned manifest: model.sig is ours
    assert r.exit_code == 0, r.output
    assert "root of trust: pinned manifest" in r.stderr
