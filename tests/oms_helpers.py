"""Keys, a certificate authority and the model_signing oracle for the signing tests.

Every key is generated at test time (cryptography); none is committed.
``model_signing`` (PyPI ``model-signing``, the OMS reference implementation,
pinned in the test extra) is called through its CLI where the tests claim
something about the CLI, and through its Python API elsewhere (the CLI costs
seconds of start-up per call).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def write_key_pair(folder: Path, name: str = "key", curve: str = "P-256") -> KeyPair:
    folder.mkdir(parents=True, exist_ok=True)
    k = ec.generate_private_key(CURVES[curve]())
    priv, pub = folder / f"{name}.pem", folder / f"{name}.pub"
    priv.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(priv, pub)


@dataclass(frozen=True)
class Pki:
    key: Path  # the signing certificate's private key
    chain: Path  # signing certificate, then the intermediate (what `sign --certificate` takes)
    leaf: Path  # the signing certificate alone
    intermediate: Path
    roots: Path  # the root CA: what a verifier trusts


def _cert(subject: str, issuer: str, key, issuer_key, ca: bool, days: int = 365):
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer_key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                          False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                          False), critical=True)
        b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(*certs) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_pki(folder: Path, name: str = "pki") -> Pki:
    """root CA -> intermediate CA -> signing certificate (digitalSignature, codeSigning)."""
    folder.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    mid_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert(f"{name} root", f"{name} root", root_key, root_key, ca=True)
    mid = _cert(f"{name} intermediate", f"{name} root", mid_key, root_key, ca=True)
    leaf = _cert(f"{name} signer", f"{name} intermediate", leaf_key, mid_key, ca=False)
    p = Pki(folder / f"{name}-key.pem", folder / f"{name}-chain.pem", folder / f"{name}-leaf.pem",
            folder / f"{name}-intermediate.pem", folder / f"{name}-roots.pem")
    p.key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    p.chain.write_bytes(_pem(leaf, mid))
    p.leaf.write_bytes(_pem(leaf))
    p.intermediate.write_bytes(_pem(mid))
    p.roots.write_bytes(_pem(root))
    return p


# -- the oracle ----------------------------------------------------------------------------


def ms_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the model_signing CLI (``python -m model_signing``)."""
    return subprocess.run([sys.executable, "-m", "model_signing", *args],
                          capture_output=True, text=True, timeout=300)


def ms_verify(folder: Path, sig: Path, *, public_key: Path | None = None,
              roots: Path | None = None) -> str | None:
    """model_signing's API verdict: None if it accepts, else its error message.

    With no hashing config given, it reads method and hash from the signature
    (the CLI always assumes files + sha256)."""
    import model_signing

    cfg = model_signing.verifying.Config()
    if public_key is not None:
        cfg = cfg.use_elliptic_key_verifier(public_key=public_key)
    else:
        cfg = cfg.use_certificate_verifier(certificate_chain=[roots])
    try:
        cfg.verify(folder, sig)
    except Exception as e:  # model_signing raises ValueError and friends
        return f"{type(e).__name__}: {e}"
    return None


def ms_sign(folder: Path, sig: Path, *, key: Path, pki: Pki | None = None,
            hash_type: str = "sha256", shard_size: int | None = None) -> None:
    """Sign with model_signing's API, leaving the signature itself out as its CLI does."""
    import model_signing

    h = model_signing.hashing.Config()
    if shard_size:
        h = h.use_shard_serialization(hashing_algorithm=hash_type, shard_size=shard_size)
    else:
        h = h.use_file_serialization(hashing_algorithm=hash_type)
    try:
        h = h.set_ignored_paths(paths=[sig.relative_to(folder)])
    except ValueError:
        pass
    cfg = model_signing.signing.Config().set_hashing_config(h)
    if pki is not None:
        cfg = cfg.use_certificate_signer(private_key=pki.key, signing_certificate=pki.leaf,
                                         certificate_chain=[pki.intermediate])
    else:
        cfg = cfg.use_elliptic_key_signer(private_key=key)
    cfg.sign(folder, sig)


def statement_of(sig: Path) -> dict:
    b = json.loads(sig.read_text())
    return json.loads(base64.b64decode(b["dsseEnvelope"]["payload"]))


def with_statement(sig: Path, stmt: dict) -> None:
    """Replace the signed statement without re-signing (a tampered bundle)."""
    b = json.loads(sig.read_text())
    b["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    sig.write_text(json.dumps(b))
