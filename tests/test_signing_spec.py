"""The OMS v1.0 specification's own schemas and test vectors (tests/data/oms-spec).

* Every bundle grokfetch writes validates against the spec's four JSON
  Schemas (bundle -> envelope -> decoded statement -> predicate), as the spec
  requires of conformance suites.
* The spec's vectors behave as its README says: valid/ passes the schemas,
  invalid/ and invalid-payload/ are rejected - by the schemas and by
  ``grokfetch.integrity.signing`` - and the one vector whose signer can be checked
  offline (the certificate bundle carries its certificates) verifies here.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from grokfetch.integrity.signing import (
    SignatureError,
    parse_statement,
    root_digest,
    sign_folder,
    verify_bundle,
)
from tests.oms_helpers import write_key_pair, write_pki

SPEC = Path(__file__).parent / "data" / "oms-spec"
VECTORS = SPEC / "test-vectors" / "v1.0"


@pytest.fixture(scope="module")
def validators():
    schemas = [json.loads(p.read_text()) for p in sorted((SPEC / "schemas/v1.0").glob("*.json"))]
    registry = Registry().with_resources(
        (s["$id"], Resource.from_contents(s, default_specification=DRAFT202012)) for s in schemas)
    by_title = {s["$id"]: s for s in schemas}
    bundle = Draft202012Validator(by_title["https://model_signing/bundle/v1.0/schema"],
                                  registry=registry)
    statement = Draft202012Validator(by_title["https://model_signing/statement/v1.0/schema"],
                                     registry=registry)
    return bundle, statement


def schema_check(path: Path, validators) -> None:
    """What the spec's validator does: bundle schema, then the decoded statement's."""
    bundle_v, statement_v = validators
    bundle = json.loads(path.read_text())  # empty.bundle.json: JSONDecodeError
    bundle_v.validate(bundle)
    payload = bundle["dsseEnvelope"]["payload"]
    statement_v.validate(json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4))))


# -- grokfetch's bundles against the schemas -------------------------------------------------


@pytest.mark.parametrize("variant", ["key sha256", "key blake3", "key shards", "certificate"])
def test_every_bundle_grokfetch_writes_validates_against_the_spec_schemas(
        tmp_path, mini_ckpt, validators, variant):
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt, folder)
    kp = write_key_pair(tmp_path)
    sig = tmp_path / "model.sig"
    if variant == "certificate":
        pki = write_pki(tmp_path / "pki")
        sign_folder(folder, pki.key, certificate=pki.chain, signature=sig)
    else:
        sign_folder(folder, kp.private, signature=sig,
                    hash_type="blake3" if "blake3" in variant else "sha256",
                    shard_size=100_000 if "shards" in variant else None)
    schema_check(sig, validators)
    bundle = json.loads(sig.read_text())
    vm = bundle["verificationMaterial"]
    assert vm["tlogEntries"] == []
    assert ("x509CertificateChain" in vm) == (variant == "certificate")
    assert ("publicKey" in vm) == (variant != "certificate")


def test_the_schemas_catch_a_broken_grokfetch_bundle(tmp_path, mini_ckpt, validators):
    """The schema check above can fail: a bundle with a resource digest in upper case."""
    folder = tmp_path / "model"
    shutil.copytree(mini_ckpt / "ckpt-0", folder)
    kp = write_key_pair(tmp_path)
    sign_folder(folder, kp.private)
    bundle = json.loads((folder / "model.sig").read_text())
    stmt = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    stmt["predicate"]["resources"][0]["digest"] = stmt["predicate"]["resources"][0][
        "digest"].upper()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    bad = tmp_path / "bad.sig"
    bad.write_text(json.dumps(bundle))
    with pytest.raises(ValidationError):
        schema_check(bad, validators)


# -- the spec's vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in (VECTORS / "valid").glob("*.json")))
def test_valid_vectors_pass_the_schemas(name, validators):
    schema_check(VECTORS / "valid" / name, validators)


@pytest.mark.parametrize("name", sorted(p.name for p in (VECTORS / "invalid").glob("*.json")))
def test_invalid_vectors_are_rejected_by_the_schemas_and_by_grokfetch(name, validators, tmp_path):
    path = VECTORS / "invalid" / name
    with pytest.raises((ValidationError, json.JSONDecodeError, KeyError)):
        schema_check(path, validators)
    pki = write_pki(tmp_path)
    kp = write_key_pair(tmp_path)
    for kw in ({"public_key": kp.public}, {"certificate": pki.roots}):
        with pytest.raises(SignatureError):
            verify_bundle(path, **kw)


def test_the_wrong_predicate_vector_is_rejected_by_the_schema_and_by_grokfetch(validators):
    path = VECTORS / "invalid-payload" / "wrong-predicate.bundle.json"
    with pytest.raises(ValidationError, match="https://model_signing/signature/v1.0"):
        schema_check(path, validators)
    payload = base64.b64decode(json.loads(path.read_text())["dsseEnvelope"]["payload"])
    with pytest.raises(SignatureError, match="is not an OMS v1.0 model signature"):
        parse_statement(payload, str(path))


def test_the_key_vector_names_its_key_and_its_statement_adds_up(tmp_path):
    """The key vector's public key is not published: its hint must make grokfetch name
    the signer as another key, and its statement (read after that) has a root digest
    equal to SHA-256 over its two resource digests, as spec section 6.5.1 defines."""
    path = VECTORS / "valid" / "key.bundle.json"
    kp = write_key_pair(tmp_path)
    with pytest.raises(SignatureError, match="signed by key e8450dec4eb99dae..., not by"):
        verify_bundle(path, public_key=kp.public)
    bundle = json.loads(path.read_text())
    model = parse_statement(base64.b64decode(bundle["dsseEnvelope"]["payload"]), str(path))
    assert [r.name for r in model.resources] == ["signme-1", "signme-2"]
    assert model.root_digest == root_digest(r.digest for r in model.resources) == \
        "92745110b1ab4368471cbe31664e10174e954b113a3df333db860317b2c6dec4"
    assert "ignore-me" in model.serialization.ignore_paths
    assert model.serialization.ignores("ignore-me/any/file")
    assert not model.serialization.ignores("sub/ignore-me")  # exact paths from the root


def test_the_certificate_vector_verifies_against_its_own_issuer(tmp_path):
    """Its chain is [signing certificate, intermediate CA]; trusting that intermediate,
    the P-384 DSSE signature over the statement verifies - a real signature made by
    another implementation, checked by grokfetch's PAE and ECDSA code."""
    path = VECTORS / "valid" / "certificate.bundle.json"
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    chain = json.loads(path.read_text())["verificationMaterial"]["x509CertificateChain"]
    issuer = x509.load_der_x509_certificate(base64.b64decode(chain["certificates"][1]["rawBytes"]))
    trusted = tmp_path / "issuer.pem"
    trusted.write_bytes(issuer.public_bytes(serialization.Encoding.PEM))
    model = verify_bundle(path, certificate=trusted)
    assert model.method == "certificate"
    assert model.signer == "certificate CN=intermediate-ca (root CN=intermediate-ca)"
    assert [f.path for f in model.files()] == ["signme-1", "signme-2"]
    stranger = write_pki(tmp_path / "other")
    with pytest.raises(SignatureError, match="does not chain to a trusted root"):
        verify_bundle(path, certificate=stranger.roots)


def test_the_sigstore_vector_is_refused_offline_with_the_reason(tmp_path):
    path = VECTORS / "valid" / "sigstore.bundle.json"
    with pytest.raises(SignatureError, match="Sigstore keyless signing"):
        verify_bundle(path, certificate=write_pki(tmp_path).roots)
    with pytest.raises(SignatureError, match="signed with a certificate, not a key"):
        verify_bundle(path, public_key=write_key_pair(tmp_path).public)
