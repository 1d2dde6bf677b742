"""OpenSSF Model Signing (OMS v1.0) signatures: make them, check them, read what they sign.

An OMS signature is a detached file (``model.sig`` by default) beside or in
the model folder.  It is a Sigstore bundle (JSON) around a DSSE envelope
whose payload is an in-toto Statement:

* ``subject``: one entry, the model folder's name and a *root digest*:
  SHA-256 over the raw bytes of every resource digest, in resource order;
* ``predicate.resources``: one ``{name, digest, algorithm}`` per file (or,
  with shard serialization, per ``path:start:end`` byte range), sorted by name;
* ``predicate.serialization``: how the folder was enumerated and hashed
  (``method`` files|shards, ``hash_type``, ``shard_size``, ``allow_symlinks``,
  ``ignore_paths``), so a verifier can do exactly the same.

The DSSE signature is ECDSA (P-256/384/521 with SHA-256/384/512) over the
DSSE pre-authentication encoding of the payload.  The bundle's
``verificationMaterial`` holds either a key hint (hex SHA-256 of the PEM
public key: the *key* method) or the signing certificate and its chain
(the *certificate* method).  Sigstore keyless signing needs Fulcio and
Rekor on the network and is not supported here.

This module is written against the spec with ``cryptography`` alone; the
reference implementation (``model_signing``) is used by the test suite as an
independent oracle, both ways.  Hashing is grokfetch's own engine
(``grokfetch.hashing``: mmap windows, every core, bounded memory).

``sign_folder`` returns the bundle it wrote; ``verify_bundle`` checks a
bundle (envelope, key or certificate chain, signature, statement, root
digest) and returns a ``SignedModel``: the signed digest of every file or
shard, as data, which ``grokfetch.integrity.verify`` then checks the files against.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokfetch.errors import DiskError, GrokfetchError, SignatureError, UsageError
from grokfetch.format.folder import JOURNAL_NAME, SIGNATURE_NAME, STATE_DIR, TORRENT_SUFFIX
from grokfetch.format.manifest import MANIFEST_NAME
from grokfetch.fsutil import atomic_write_bytes, safe_relpath
from grokfetch.hashing import ALGORITHMS, default_jobs, parallel_map, range_digest
from grokfetch.progress import NullBar, ProgressFactory, SharedCounter

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
DEFAULT_SIGNATURE = SIGNATURE_NAME

# Excluded by every OMS signer (matched as top-level paths of the model folder).
SPEC_IGNORES = (".git", ".gitattributes", ".github", ".gitignore")


def grokfetch_own_paths() -> tuple[str, ...]:
    """grokfetch's own files in a model folder.  They change (or appear) after signing
    without touching the model - the pinned manifest, get's state folder (resume data,
    libtorrent's part file, the lock), repack's journal - so they stay out of the signed
    set, named in serialization.ignore_paths where every OMS verifier (model_signing
    too) skips them.  Saved .torrent files are added by name when signing."""
    return (MANIFEST_NAME, STATE_DIR, JOURNAL_NAME)


_HEX = re.compile(r"^[0-9a-f]+$")
_DIGEST_HEX_LEN = {"sha256": 64, "blake3": 64, "blake2b": 128}
_SHARD_NAME = re.compile(r"^(.*):(\d+):(\d+)$")


# -- what a signature says ---------------------------------------------------------------


@dataclass(frozen=True)
class Serialization:
    """``predicate.serialization``: how the folder was enumerated and hashed."""

    method: str = "files"  # 'files' or 'shards'
    hash_type: str = "sha256"
    allow_symlinks: bool = False
    ignore_paths: tuple[str, ...] = ()
    shard_size: int | None = None  # bytes, with method 'shards'

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method, "hash_type": self.hash_type}
        if self.method == "shards":
            d["shard_size"] = self.shard_size
        d["allow_symlinks"] = self.allow_symlinks
        d["ignore_paths"] = list(self.ignore_paths)
        return d

    def ignores(self, rel: str) -> bool:
        """Whether ``rel`` (a '/'-separated path in the folder) is outside the signed set:
        it is, or is below, an ignore path (exact relative paths, per the spec)."""
        return any(rel == p or rel.startswith(p + "/") for p in (*SPEC_IGNORES, *self.ignore_paths))


@dataclass(frozen=True)
class Resource:
    """One signed digest: a whole file, or the bytes [start, end) of it."""

    path: str
    digest: str
    start: int | None = None
    end: int | None = None

    @property
    def name(self) -> str:
        return self.path if self.start is None else f"{self.path}:{self.start}:{self.end}"


@dataclass(frozen=True)
class SignedFile:
    """What a signature says about one file: its whole digest, or its shard digests."""

    path: str
    algorithm: str
    digest: str | None = None  # files method
    shards: list[str] | None = None  # shards method: digest of each shard_size range, in order
    size: int | None = None  # known with shards (the end of the last one)


@dataclass(frozen=True)
class SignedModel:
    """A verified bundle: who signed, and the signed digests."""

    signer: str  # 'key 3f2a...' or 'certificate CN=... (root CN=...)'
    method: str  # 'key' or 'certificate'
    key_hint: str  # hex SHA-256 of the signer's PEM public key
    name: str  # subject name (informational only)
    root_digest: str
    serialization: Serialization
    resources: list[Resource]
    signature_path: str = ""
    certificate: dict[str, str] = field(default_factory=dict)

    def files(self) -> list[SignedFile]:
        """The signed files, each with its digest or its shards (checked to tile the file)."""
        s = self.serialization
        if s.method == "files":
            return [SignedFile(r.path, s.hash_type, digest=r.digest) for r in self.resources]
        by_path: dict[str, list[Resource]] = {}
        for r in self.resources:
            by_path.setdefault(r.path, []).append(r)
        out = []
        assert s.shard_size is not None
        for path, rs in by_path.items():
            rs.sort(key=lambda r: r.start or 0)
            pos = 0
            for i, r in enumerate(rs):
                last = i == len(rs) - 1
                ok = r.start == pos and r.end is not None and (
                    r.end - pos == s.shard_size or (last and 0 < r.end - pos <= s.shard_size))
                if not ok:
                    raise SignatureError(
                        f"{self.signature_path}: shard {r.name} does not continue the shards of "
                        f"{path} (shard_size {s.shard_size}): malformed statement")
                pos = r.end  # type: ignore[assignment]
            out.append(SignedFile(path, s.hash_type, shards=[r.digest for r in rs], size=pos))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": self.signature_path,
            "signer": self.signer,
            "method": self.method,
            "key_hint": self.key_hint,
            "certificate": self.certificate or None,
            "subject": {"name": self.name, "sha256": self.root_digest},
            "serialization": self.serialization.to_dict(),
            "resources": len(self.resources),
        }


def root_digest(digests: Iterable[str]) -> str:
    """The subject digest: SHA-256 over the concatenated raw digests, in the order given."""
    h = hashlib.sha256()
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


# -- keys and certificates ---------------------------------------------------------------


def _crypto() -> Any:
    # cryptography takes ~0.1 s to import; verify without --signature never needs it
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec


def _ec_hash(key: Any) -> Any:
    """The ECDSA hash for a curve, as Sigstore's algorithm registry and model_signing pair them."""
    from cryptography.hazmat.primitives import hashes

    ec = _crypto()
    if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        raise UsageError(f"not an elliptic-curve key ({type(key).__name__}); OMS signatures "
                         "use ECDSA keys on P-256, P-384 or P-521")
    size = key.curve.key_size
    if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise UsageError(f"unsupported curve {key.curve.name}: use P-256, P-384 or P-521")
    return {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[size]


def key_hint(public_key: Any) -> str:
    """``verificationMaterial.publicKey.hint``: hex SHA-256 of the key's PEM encoding."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read {what}: {e.strerror or e}") from None


def load_private_key(path: str | os.PathLike[str], password: bytes | None = None) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "the private key")
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError as e:  # encrypted without a password, or a password for a clear key
        raise UsageError(f"{path}: {e}") from None
    except ValueError as e:
        raise UsageError(f"{path}: not a PEM private key ({e})") from None
    _ec_hash(key)
    return key


def load_public_key(path: str | os.PathLike[str]) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "the public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise UsageError(f"{path}: not a PEM public key ({e})") from None
    _ec_hash(key)
    return key


def load_certificates(path: str | os.PathLike[str]) -> list[Any]:
    from cryptography import x509

    data = _read(path, "certificates")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise UsageError(f"{path}: not PEM certificates ({e})") from None
    return list(certs)


def _der(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.DER))


def _subject(cert: Any) -> str:
    return str(cert.subject.rfc4514_string()) or "(empty subject)"


def _validate_chain(chain: list[Any], roots: list[Any], where: str) -> Any:
    """Walk from the leaf (chain[0]) through chain[1:] to one of ``roots``; return that root.

    Each link: the issuer's name matches, its signature verifies, it is a CA.
    Validity is checked at the moment the leaf was issued (the signing time is
    not recorded without a timestamp authority), as ``model_signing`` does, so a
    signature outlives its short-lived certificate.
    """
    from cryptography import x509

    leaf = chain[0]
    when = leaf.not_valid_before_utc
    root_ders = {_der(r) for r in roots}
    current = leaf
    for _ in range(len(chain) + 1):
        if not (current.not_valid_before_utc <= when <= current.not_valid_after_utc):
            raise SignatureError(f"{where}: certificate {_subject(current)} was not valid when "
                                 "the signing certificate was issued")
        if _der(current) in root_ders:
            return current
        issuer = None
        for cand in [*roots, *chain[1:]]:
            if cand.subject != current.issuer or cand is current:
                continue
            try:
                current.verify_directly_issued_by(cand)
            except Exception:  # InvalidSignature, or a key type that cannot have signed it
                continue
            try:
                bc = cand.extensions.get_extension_for_class(x509.BasicConstraints).value
                if not bc.ca:
                    continue
            except x509.ExtensionNotFound:
                continue
            issuer = cand
            break
        if issuer is None:
            raise SignatureError(
                f"{where}: certificate {_subject(current)} does not chain to a trusted root "
                "(none of the given certificates issued it)")
        if _der(issuer) in root_ders:
            if not (issuer.not_valid_before_utc <= when <= issuer.not_valid_after_utc):
                raise SignatureError(f"{where}: root certificate {_subject(issuer)} was not "
                                     "valid when the signing certificate was issued")
            return issuer
        current = issuer
    raise SignatureError(f"{where}: certificate chain too long or circular")


def _can_sign(cert: Any) -> bool:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        if cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        return ExtendedKeyUsageOID.CODE_SIGNING in eku
    except x509.ExtensionNotFound:
        return False


# -- DSSE --------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _b64decode(s: object, what: str, where: str) -> bytes:
    if not isinstance(s, str) or not s:
        raise SignatureError(f"{where}: {what} is missing or not a string")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{where}: {what} is not base64") from None


# -- enumerating and hashing a folder ----------------------------------------------------


@dataclass(frozen=True)
class _Task:
    path: str
    disk: Path
    start: int
    end: int  # -1: the whole file
    size: int


def own_ignores(folder: Path, signature: Path | None) -> list[str]:
    """The ignore paths grokfetch adds when signing ``folder``: its own files, the .torrent
    files ``get`` saved at the top, and the signature file when it is inside the folder."""
    out = list(grokfetch_own_paths())
    try:
        out += sorted(p.name for p in folder.iterdir() if p.name.endswith(TORRENT_SUFFIX))
    except OSError as e:
        raise UsageError(f"{folder}: cannot list: {e.strerror or e}") from None
    if signature is not None:
        rel = _relative_inside(folder, signature)
        if rel is not None:
            out.append(rel)
    return list(dict.fromkeys(out))


def _relative_inside(folder: Path, p: Path) -> str | None:
    try:
        return (Path(os.path.abspath(p))).relative_to(os.path.abspath(folder)).as_posix()
    except ValueError:
        return None


def enumerate_files(folder: Path, serialization: Serialization) -> list[tuple[str, Path, int]]:
    """(name, path, size) of every regular file in the signed set, sorted by name.

    Symbolic links are refused (the spec's ``allow_symlinks: false``, which is
    what this module writes), as are special files, names that are not UTF-8,
    and an empty set.
    """
    out: list[tuple[str, Path, int]] = []

    def unreadable(err: OSError) -> None:  # a folder we cannot list must not go unsigned
        raise UsageError(f"{err.filename}: cannot list: {err.strerror or err}")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        base = Path(dirpath)
        rel_dir = base.relative_to(folder).as_posix()
        keep = []
        for d in sorted(dirnames):
            rel = d if rel_dir == "." else f"{rel_dir}/{d}"
            if serialization.ignores(rel):
                continue
            if (base / d).is_symlink():
                raise UsageError(f"{base / d}: a symbolic link; OMS signatures made here do not "
                                 "follow links (allow_symlinks: false): replace it by the folder")
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if serialization.ignores(rel):
                continue
            p = base / name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(f"{p!r}: file name is not UTF-8; an OMS signature "
                                 "cannot name it") from None
            try:
                st = p.lstat()
            except OSError as e:
                raise UsageError(f"{p}: {e.strerror or e}") from None
            if stat.S_ISLNK(st.st_mode):
                raise UsageError(f"{p}: a symbolic link; OMS signatures made here do not follow "
                                 "links (allow_symlinks: false): replace it by the file")
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{p}: not a regular file")
            out.append((rel, p, st.st_size))
    out.sort(key=lambda t: t[0])
    if not out:
        raise UsageError(f"{folder}: no files to sign")
    return out


def hash_folder(
    folder: Path,
    serialization: Serialization,
    *,
    jobs: int | None = None,
    progress: ProgressFactory | None = None,
) -> tuple[list[Resource], int]:
    """The resource list of ``folder`` (one digest per file, or per shard, sorted by name)
    and the bytes hashed.

    Every file (or shard) is one task on grokfetch's hash pool, largest first;
    a large BLAKE3 file also uses blake3's own threads.
    """
    files = enumerate_files(folder, serialization)
    tasks: list[_Task] = []
    for rel, p, size in files:
        if serialization.method == "shards":
            assert serialization.shard_size
            tasks += [_Task(rel, p, s, min(s + serialization.shard_size, size), size)
                      for s in range(0, size, serialization.shard_size)]  # empty files: none
        else:
            tasks.append(_Task(rel, p, 0, -1, size))
    total = sum((t.end if t.end >= 0 else t.size) - t.start for t in tasks)
    bar = progress(total, "sign") if progress is not None else NullBar()
    on_bytes = SharedCounter(bar)  # hashing threads share one bar

    def one(t: _Task) -> Resource:
        try:
            digest, n = range_digest(t.disk, t.start, t.end, serialization.hash_type,
                                     on_bytes=on_bytes)
        except OSError as e:
            raise UsageError(f"{t.disk}: cannot read: {e.strerror or e}") from None
        want = (t.end if t.end >= 0 else t.size) - t.start
        if n != want or (t.end < 0 and t.disk.stat().st_size != t.size):
            raise UsageError(f"{t.disk}: changed size while it was being hashed")
        return Resource(t.path, digest, None if t.end < 0 else t.start,
                        None if t.end < 0 else t.end)

    order = sorted(tasks, key=lambda t: -((t.end if t.end >= 0 else t.size) - t.start))
    try:
        out = list(parallel_map(one, order, jobs or default_jobs(serialization.hash_type)))
    finally:
        bar.close()
    out.sort(key=lambda r: r.name)  # the spec: lexicographic by name (code points)
    return out, total


# -- signing -----------------------------------------------------------------------------


def statement(name: str, resources: list[Resource], serialization: Serialization) -> dict:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root_digest(r.digest for r in resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "resources": [{"name": r.name, "digest": r.digest,
                           "algorithm": serialization.hash_type} for r in resources],
            "serialization": serialization.to_dict(),
        },
    }


def make_bundle(stmt: dict, private_key: Any, chain: list[Any] | None = None) -> dict:
    """Sign a statement: the Sigstore bundle (key method, or certificate method with
    ``chain`` = the signing certificate followed by its issuers)."""
    ec = _crypto()
    payload = json.dumps(stmt, indent=2, ensure_ascii=False).encode("utf-8")
    sig = private_key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(_ec_hash(private_key)))
    material: dict[str, Any]
    if chain:
        material = {"x509CertificateChain": {"certificates": [
            {"rawBytes": base64.b64encode(_der(c)).decode()} for c in chain]}}
    else:
        material = {"publicKey": {"hint": key_hint(private_key.public_key())}}
    material["tlogEntries"] = []
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }


@dataclass(frozen=True)
class SignResult:
    signature: Path
    signer: str
    serialization: Serialization
    resources: int
    bytes_hashed: int
    seconds: float
    root_digest: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": str(self.signature),
            "signer": self.signer,
            "serialization": self.serialization.to_dict(),
            "resources": self.resources,
            "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
            "root_digest": self.root_digest,
        }


def sign_folder(
    folder: str | os.PathLike[str],
    key: str | os.PathLike[str],
    *,
    signature: str | os.PathLike[str] | None = None,
    certificate: str | os.PathLike[str] | None = None,
    hash_type: str = "sha256",
    shard_size: int | None = None,
    ignore_paths: Iterable[str] = (),
    password: bytes | None = None,
    jobs: int | None = None,
    progress: ProgressFactory | None = None,
) -> SignResult:
    """Write an OMS signature of ``folder`` (default ``folder/model.sig``); return what it says.

    ``certificate``: PEM file with the signing certificate first, then its
    issuers (the certificate method); otherwise the key method.
    ``shard_size``: sign ``path:start:end`` ranges of that many bytes
    (SHA-256 or BLAKE2b only: ``model_signing`` hashes BLAKE3 by whole files
    whatever is asked, so a BLAKE3 shard signature would not verify there).
    """
    t0 = time.monotonic()
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder")
    if hash_type not in ALGORITHMS:
        raise UsageError(f"unknown hash {hash_type!r}; choose {', '.join(ALGORITHMS)}")
    if shard_size is not None and shard_size <= 0:
        raise UsageError(f"--shard-size must be positive, got {shard_size}")
    if shard_size is not None and hash_type == "blake3":
        raise UsageError("--shard-size with blake3: model_signing verifies BLAKE3 by whole "
                         "files only; BLAKE3 is parallel within a file anyway, so drop "
                         "--shard-size")
    sig_path = Path(signature) if signature is not None else root / DEFAULT_SIGNATURE
    private_key = load_private_key(key, password)
    chain = None
    if certificate is not None:
        chain = load_certificates(certificate)
        if not chain:
            raise UsageError(f"{certificate}: no certificate in it")
        if chain[0].public_key() != private_key.public_key():
            raise UsageError(f"{certificate}: its first certificate is not for the key {key}")
    extra = []
    for p in ignore_paths:
        extra.append(safe_relpath(p, "ignore path"))
    ignores = list(dict.fromkeys([*SPEC_IGNORES, *own_ignores(root, sig_path), *extra]))
    ser = Serialization(
        method="shards" if shard_size else "files",
        hash_type=hash_type,
        allow_symlinks=False,
        ignore_paths=tuple(ignores),
        shard_size=shard_size,
    )
    resources, hashed = hash_folder(root, ser, jobs=jobs, progress=progress)
    name = os.path.basename(os.path.abspath(root))
    stmt = statement(name, resources, ser)
    bundle = make_bundle(stmt, private_key, chain)
    try:
        atomic_write_bytes(sig_path, (json.dumps(bundle, indent=2) + "\n").encode())
    except OSError as e:
        raise DiskError(f"{sig_path}: cannot write the signature: {e.strerror or e}") from None
    hint = key_hint(private_key.public_key())
    signer = (f"certificate {_subject(chain[0])}" if chain else f"key {hint[:16]}")
    return SignResult(sig_path, signer, ser, len(resources), hashed, time.monotonic() - t0,
                      stmt["subject"][0]["digest"]["sha256"])


# -- verifying a bundle ------------------------------------------------------------------


def read_bundle(path: str | os.PathLike[str]) -> dict:
    data = _read(path, "the signature")
    try:
        bundle = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SignatureError(f"{path}: not a JSON signature bundle ({e})") from None
    if not isinstance(bundle, dict):
        raise SignatureError(f"{path}: not a signature bundle (a JSON object is expected)")
    return bundle


def verify_bundle(
    path: str | os.PathLike[str],
    *,
    public_key: str | os.PathLike[str] | None = None,
    certificate: str | os.PathLike[str] | None = None,
) -> SignedModel:
    """Check an OMS bundle against the key (or the trusted root certificates) the user
    named, and return what it signs.  Raises SignatureError naming the first thing wrong."""
    where = str(path)
    if (public_key is None) == (certificate is None):
        raise UsageError("a signature is checked against --public-key or --certificate "
                         "(one of them): the key or root certificates you trust")
    bundle = read_bundle(path)
    mt = bundle.get("mediaType")
    if not isinstance(mt, str) or not mt.startswith("application/vnd.dev.sigstore.bundle"):
        raise SignatureError(f"{where}: not a Sigstore bundle (mediaType {mt!r})")
    vm = bundle.get("verificationMaterial")
    env = bundle.get("dsseEnvelope")
    if not isinstance(vm, dict):
        raise SignatureError(f"{where}: no verificationMaterial")
    if not isinstance(env, dict):
        raise SignatureError(f"{where}: no dsseEnvelope (a message-signature bundle is not an "
                             "OMS signature)")
    if env.get("payloadType") != PAYLOAD_TYPE:
        raise SignatureError(f"{where}: payloadType {env.get('payloadType')!r}, expected "
                             f"{PAYLOAD_TYPE!r}")
    payload = _b64decode(env.get("payload"), "the envelope payload", where)
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs or not all(isinstance(s, dict) for s in sigs):
        raise SignatureError(f"{where}: the envelope has no signatures")

    cert_info: dict[str, str] = {}
    if public_key is not None:
        if "publicKey" not in vm:
            if "x509CertificateChain" in vm or "certificate" in vm:
                raise SignatureError(f"{where}: signed with a certificate, not a key: check it "
                                     "with --certificate ROOTS.pem")
            raise SignatureError(f"{where}: verificationMaterial names no key")
        key = load_public_key(public_key)
        hint = key_hint(key)
        pk = vm["publicKey"]
        got = pk.get("hint") if isinstance(pk, dict) else None
        if got and got != hint:
            raise SignatureError(f"{where}: signed by key {str(got)[:16]}..., not by "
                                 f"{public_key} (key {hint[:16]}...)")
        method, signer = "key", f"key {hint[:16]}"
    else:
        if "x509CertificateChain" not in vm:
            kind = ("Sigstore keyless signing (needs Fulcio and Rekor online; not supported)"
                    if "certificate" in vm else "a key, not a certificate: check it with "
                    "--public-key PUB.pem")
            raise SignatureError(f"{where}: signed with {kind}")
        from cryptography import x509

        raw = vm["x509CertificateChain"].get("certificates") if isinstance(
            vm["x509CertificateChain"], dict) else None
        if not isinstance(raw, list) or not raw:
            raise SignatureError(f"{where}: the certificate chain is empty")
        chain = []
        for i, c in enumerate(raw):
            der = _b64decode(c.get("rawBytes") if isinstance(c, dict) else None,
                             f"certificate {i}", where)
            try:
                chain.append(x509.load_der_x509_certificate(der))
            except ValueError as e:
                raise SignatureError(f"{where}: certificate {i} is not DER ({e})") from None
        assert certificate is not None
        roots = load_certificates(certificate)
        if not roots:
            raise UsageError(f"{certificate}: no certificate in it")
        root = _validate_chain(chain, roots, where)
        if not _can_sign(chain[0]):
            raise SignatureError(f"{where}: certificate {_subject(chain[0])} is not for signing "
                                 "(no digitalSignature key usage or codeSigning extended usage)")
        key = chain[0].public_key()
        try:
            _ec_hash(key)
        except UsageError as e:
            raise SignatureError(f"{where}: certificate {_subject(chain[0])}: {e}") from None
        hint = key_hint(key)
        fp = hashlib.sha256(_der(chain[0])).hexdigest()
        method = "certificate"
        signer = f"certificate {_subject(chain[0])} (root {_subject(root)})"
        cert_info = {"subject": _subject(chain[0]), "sha256_fingerprint": fp,
                     "root": _subject(root),
                     "not_after": chain[0].not_valid_after_utc.isoformat()}

    from cryptography.exceptions import InvalidSignature

    ec = _crypto()
    message = pae(PAYLOAD_TYPE, payload)
    good = False
    for s in sigs:
        raw_sig = _b64decode(s.get("sig"), "a signature", where)
        try:
            key.verify(raw_sig, message, ec.ECDSA(_ec_hash(key)))
            good = True
            break
        except InvalidSignature:
            continue
    if not good:
        raise SignatureError(f"{where}: the signature does not verify with {signer}: the "
                             "statement was altered after signing, or another key signed it")
    return parse_statement(payload, where, signer, method, hint, cert_info)


def parse_statement(payload: bytes, where: str, signer: str = "", method: str = "",
                    hint: str = "", cert_info: dict[str, str] | None = None) -> SignedModel:
    """Read a DSSE payload as an OMS v1.0 statement; check its form and its root digest.

    Only call this on a payload whose signature verified (``verify_bundle``):
    a statement alone proves nothing.
    """
    try:
        st = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SignatureError(f"{where}: the signed payload is not JSON ({e})") from None
    if not isinstance(st, dict):
        raise SignatureError(f"{where}: the signed payload is not an in-toto statement")
    if st.get("_type") != STATEMENT_TYPE:
        raise SignatureError(f"{where}: statement _type {st.get('_type')!r}, expected "
                             f"{STATEMENT_TYPE!r}")
    if st.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError(f"{where}: predicateType {st.get('predicateType')!r} is not an OMS "
                             f"v1.0 model signature ({PREDICATE_TYPE})")
    subject = st.get("subject")
    if not isinstance(subject, list) or len(subject) != 1 or not isinstance(subject[0], dict):
        raise SignatureError(f"{where}: the statement must have exactly one subject")
    name = subject[0].get("name")
    digest = subject[0].get("digest")
    want_root = digest.get("sha256") if isinstance(digest, dict) else None
    if not isinstance(name, str) or not name or not isinstance(want_root, str):
        raise SignatureError(f"{where}: the subject needs a name and a sha256 digest")
    pred = st.get("predicate")
    if not isinstance(pred, dict):
        raise SignatureError(f"{where}: the statement has no predicate")
    ser = _parse_serialization(pred.get("serialization"), where)
    items = pred.get("resources")
    if not isinstance(items, list) or not items:
        raise SignatureError(f"{where}: predicate.resources is missing or empty")
    resources: list[Resource] = []
    seen: set[str] = set()
    for i, r in enumerate(items):
        if not isinstance(r, dict):
            raise SignatureError(f"{where}: resource {i} is not an object")
        rname, rdigest, alg = r.get("name"), r.get("digest"), r.get("algorithm")
        if not isinstance(rname, str) or not rname:
            raise SignatureError(f"{where}: resource {i} has no name")
        # model_signing 1.1.1 names shard digests 'sha256-sharded-<shard_size>'
        if alg != ser.hash_type and alg != f"{ser.hash_type}-sharded-{ser.shard_size}":
            raise SignatureError(f"{where}: resource {rname} uses {alg!r}, the serialization "
                                 f"says {ser.hash_type!r}")
        if (not isinstance(rdigest, str) or not _HEX.match(rdigest)
                or len(rdigest) != _DIGEST_HEX_LEN[ser.hash_type]):
            raise SignatureError(f"{where}: resource {rname}: malformed {ser.hash_type} digest")
        if rname in seen:
            raise SignatureError(f"{where}: resource {rname} is listed twice")
        seen.add(rname)
        if ser.method == "shards":
            m = _SHARD_NAME.match(rname)  # the last two ':'-separated numbers (names may hold ':')
            if not m or int(m.group(2)) >= int(m.group(3)):
                raise SignatureError(f"{where}: shard resource {rname!r} is not path:start:end")
            path, start, end = m.group(1), int(m.group(2)), int(m.group(3))
        else:
            path, start, end = rname, None, None
        try:
            safe = safe_relpath(path, "signed path")
        except GrokfetchError as e:
            raise SignatureError(f"{where}: {e}") from None
        if safe != path:
            raise SignatureError(f"{where}: signed path {path!r} is not canonical")
        resources.append(Resource(path, rdigest, start, end))
    got_root = root_digest(r.digest for r in resources)
    if got_root != want_root:
        raise SignatureError(f"{where}: statement is inconsistent: subject digest {want_root} "
                             f"but its resources hash to {got_root}")
    model = SignedModel(signer, method, hint, name, want_root, ser, resources, where,
                        cert_info or {})
    model.files()  # shards must tile each file: checked now, one error line
    return model


def _parse_serialization(s: object, where: str) -> Serialization:
    if not isinstance(s, dict):
        raise SignatureError(f"{where}: predicate.serialization is missing")
    method, hash_type = s.get("method"), s.get("hash_type")
    if method not in ("files", "shards"):
        raise SignatureError(f"{where}: serialization method {method!r} is not files or shards")
    if hash_type not in ALGORITHMS:
        raise SignatureError(f"{where}: hash_type {hash_type!r} is not one of "
                             f"{', '.join(ALGORITHMS)}")
    allow = s.get("allow_symlinks", False)
    if not isinstance(allow, bool):
        raise SignatureError(f"{where}: allow_symlinks is not true or false")
    ignores = s.get("ignore_paths", [])
    if not isinstance(ignores, list) or not all(isinstance(p, str) and p for p in ignores):
        raise SignatureError(f"{where}: ignore_paths is not a list of paths")
    shard_size = s.get("shard_size")
    if isinstance(shard_size, float) and shard_size.is_integer():
        shard_size = int(shard_size)  # model_signing 1.1.1 writes it as a JSON float
    if method == "shards":
        if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size <= 0:
            raise SignatureError(f"{where}: shard serialization without a positive shard_size")
    else:
        shard_size = None
    clean = []
    for p in ignores:
        try:
            clean.append(safe_relpath(p, "ignore path"))
        except GrokfetchError:
            continue  # an ignore path outside the folder ignores nothing in it
    return Serialization(method, hash_type, allow, tuple(clean), shard_size)


__all__ = [
    "DEFAULT_SIGNATURE",
    "grokfetch_own_paths",
    "Resource",
    "Serialization",
    "SignResult",
    "SignatureError",
    "SignedFile",
    "SignedModel",
    "key_hint",
    "root_digest",
    "sign_folder",
    "verify_bundle",
]
