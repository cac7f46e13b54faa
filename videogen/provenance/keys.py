"""A workdir's provenance secrets, created on first use, or key files a user points to instead.

    WORKDIR/provenance/          (0700)
      watermark.key              (0600) 32 random bytes as 64 hex digits: keys the watermark
      signing.key                (0600) the C2PA signing key: ECDSA P-256 (ES256), PKCS#8 PEM
      signing.crt                (0644) its certificate, issued by signing_ca.crt
      signing_ca.crt             (0644) a one-off local CA: the trust anchor that pins signing.crt
      .lock                      (0600) serialises first creation between processes

c2pa refuses to sign with a self-signed end-entity certificate, so the "self-signed certificate"
is a two-link chain: a local CA signs one end-entity certificate, and the CA's private key is then
dropped, never written: signing_ca.crt can vouch for this one signer and nothing else, so a
verifier that takes it as a trust anchor pins the workdir's signer.

Secrets: key files are created with os.open(..., 0o600) (never chmod-ed after writing) in a 0700
folder; their contents are returned to the caller and never logged, printed or put in a message.
A key file whose permissions let the group or others read or write it is refused, as ssh refuses
an unprotected private key: a leaked watermark key lets anyone forge or strip the watermark, a
leaked signing key lets anyone sign as this workdir. The fix is one `chmod 600 FILE`.

A workdir shared for generation need not share the keys: `key_file` (--key=FILE) and the
(`key_file`, `cert_file`) signing pair point elsewhere, and then nothing is created.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import pathlib
import stat
import uuid
from collections.abc import Iterator

from absl import logging
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import types as key_types
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROVENANCE_DIR = "provenance"
WATERMARK_KEY_FILE = "watermark.key"
SIGNING_KEY_FILE = "signing.key"
SIGNING_CERT_FILE = "signing.crt"
SIGNING_CA_FILE = "signing_ca.crt"
WATERMARK_KEY_BYTES = 32
# Without a timestamp authority a verifier checks the certificate's validity against today, so a
# manifest stops verifying when its certificate expires: make that far away.
CERTIFICATE_DAYS = 20 * 365
_LOCK_FILE = ".lock"

PathLike = str | os.PathLike
PrivateKey = key_types.PrivateKeyTypes


class KeyFileError(ValueError):
  """A key or certificate file is missing, unreadable, unprotected or malformed."""


def provenance_dir(workdir: PathLike) -> pathlib.Path:
  """WORKDIR/provenance: where a workdir keeps its provenance keys."""
  return pathlib.Path(workdir).absolute() / PROVENANCE_DIR


def trust_anchor_file(workdir: PathLike) -> pathlib.Path | None:
  """The workdir's local CA certificate (a verifier's trust anchor), or None if not created."""
  path = provenance_dir(workdir) / SIGNING_CA_FILE
  return path if path.exists() else None


# ---------------------------------------------------------------------------------------------
# Reading key files.


def _check_private(path: pathlib.Path, what: str) -> None:
  """Refuses a key file that the group or others may read or write (see the module docstring)."""
  mode = stat.S_IMODE(path.stat().st_mode)
  if mode & 0o077:
    raise KeyFileError(f"{what} {path} is accessible by others (mode {mode:04o}): a key must be "
                       f"private; run `chmod 600 {path}`")


def read_private(path: PathLike, what: str) -> bytes:
  """The bytes of an existing key file after checking that it exists, is private and readable.

  Args:
    path: the key file.
    what: what the file is, for errors ("watermark key", "signing key").

  Raises:
    KeyFileError: the file is missing, not a file, accessible by others, or unreadable.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise KeyFileError(f"{what} {path} does not exist: pass the path of an existing key file")
  if not path.is_file():
    raise KeyFileError(f"{what} {path} is not a file: pass the path of a key file")
  _check_private(path, what)
  try:
    return path.read_bytes()
  except OSError as error:
    raise KeyFileError(f"cannot read {what} {path} ({error.strerror}): make it readable by "
                       f"this user (`chmod 600 {path}`) or pass another key") from None


def _read_public(path: pathlib.Path, what: str) -> bytes:
  if not path.is_file():
    raise KeyFileError(f"{what} {path} does not exist: pass the path of a PEM certificate")
  try:
    return path.read_bytes()
  except OSError as error:
    raise KeyFileError(f"cannot read {what} {path} ({error.strerror}): make it readable by "
                       f"this user") from None


def _parse_watermark_key(data: bytes, path: pathlib.Path) -> bytes:
  text = data.decode("ascii", errors="replace").strip()
  try:
    key = bytes.fromhex(text)
  except ValueError:
    key = b""
  if len(key) != WATERMARK_KEY_BYTES:
    # The message names the expected form, never the file's content: it may be a secret.
    raise KeyFileError(
        f"watermark key {path} is not {2 * WATERMARK_KEY_BYTES} hex digits "
        f"({WATERMARK_KEY_BYTES} bytes): make one with `python -c \"import secrets; "
        f"print(secrets.token_hex({WATERMARK_KEY_BYTES}))\" > KEY && chmod 600 KEY`")
  return key


def _load_private_key(data: bytes, path: pathlib.Path) -> PrivateKey:
  try:
    return serialization.load_pem_private_key(data, password=None)
  except TypeError:
    raise KeyFileError(f"signing key {path} is encrypted: c2pa signs with an unencrypted PEM key; "
                       f"decrypt it (`openssl pkey -in {path} -out NEW`, then `chmod 600 NEW`)"
                       ) from None
  except ValueError:
    raise KeyFileError(f"signing key {path} is not a PEM private key: pass a PEM (PKCS#8) key "
                       f"such as `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` "
                       f"writes") from None


def _load_certificate(data: bytes, path: pathlib.Path) -> x509.Certificate:
  try:
    return x509.load_pem_x509_certificates(data)[0]
  except ValueError:
    raise KeyFileError(f"signing certificate {path} is not a PEM certificate chain: pass the PEM "
                       f"certificate of the signing key, end-entity certificate first") from None


def load_signer(key_path: PathLike, cert_path: PathLike) -> tuple[PrivateKey, bytes]:
  """A signing key and its certificate chain, checked to be readable and to belong together.

  Returns:
    (the private key, the certificate chain's PEM bytes).

  Raises:
    KeyFileError: either file is missing, unreadable, malformed, the key is accessible by others,
      or the certificate certifies another key.
  """
  key_path, cert_path = pathlib.Path(key_path), pathlib.Path(cert_path)
  key = _load_private_key(read_private(key_path, "signing key"), key_path)
  chain = _read_public(cert_path, "signing certificate")
  spki = serialization.PublicFormat.SubjectPublicKeyInfo
  if (_load_certificate(chain, cert_path).public_key().public_bytes(
      serialization.Encoding.DER, spki)
      != key.public_key().public_bytes(serialization.Encoding.DER, spki)):
    raise KeyFileError(f"signing certificate {cert_path} does not certify the key {key_path}: "
                       f"pass the certificate issued for that key (end-entity certificate first)")
  return key, chain


# ---------------------------------------------------------------------------------------------
# Creating key files.


@contextlib.contextmanager
def _creation_lock(folder: pathlib.Path) -> Iterator[None]:
  """Serialises key creation in `folder` between processes (generations running side by side)."""
  fd = os.open(folder / _LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # closing releases the lock


def _private_folder(workdir: PathLike) -> pathlib.Path:
  folder = provenance_dir(workdir)
  folder.parent.mkdir(parents=True, exist_ok=True)
  with contextlib.suppress(FileExistsError):
    folder.mkdir(mode=0o700)
  return folder


def _write_new(path: pathlib.Path, data: bytes, mode: int) -> None:
  """Writes a file that must not exist yet, created with `mode`; a reader never sees it partial."""
  temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
  fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
  try:
    with os.fdopen(fd, "wb") as file:
      file.write(data)
      file.flush()
      os.fsync(file.fileno())
    os.link(temporary, path)  # unlike a rename, fails if the file appeared meanwhile
  finally:
    temporary.unlink()


def _name(common_name: str) -> x509.Name:
  return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "videogen"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(**granted: bool) -> x509.KeyUsage:
  usages = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False)
  return x509.KeyUsage(**{**usages, **granted})


def _new_signer() -> tuple[bytes, bytes, bytes]:
  """A fresh (signing key PEM, its certificate PEM, the local CA's certificate PEM).

  The end-entity certificate follows the C2PA certificate profile (c2pa refuses others): not a
  CA, a critical key usage with digitalSignature, the emailProtection extended key usage, and key
  identifiers linking it to its issuer. The CA's private key only lives in this function. The
  names say nothing of the workdir: the certificate travels in every manifest.
  """
  now = datetime.datetime.now(datetime.timezone.utc)
  start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=CERTIFICATE_DAYS)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = _name("videogen local CA")
  ca_cert = (
      x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
      .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(start).not_valid_after(end)
      .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
      .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                     critical=False)
      .sign(ca_key, hashes.SHA256()))
  key = ec.generate_private_key(ec.SECP256R1())
  cert = (
      x509.CertificateBuilder().subject_name(_name("videogen signer"))
      .issuer_name(ca_name).public_key(key.public_key())
      .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
      .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
      .add_extension(_key_usage(digital_signature=True), critical=True)
      .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                     critical=False)
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
      .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                     critical=False)
      .sign(ca_key, hashes.SHA256()))
  key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
  pem = serialization.Encoding.PEM
  return key_pem, cert.public_bytes(pem), ca_cert.public_bytes(pem)


# ---------------------------------------------------------------------------------------------
# The API.


def watermark_key(workdir: PathLike | None = None, key_file: PathLike | None = None,
                  create: bool = True) -> bytes:
  """The secret that keys the watermark: `key_file` if given, else the workdir's.

  Args:
    workdir: the run's directory; its key is WORKDIR/provenance/watermark.key.
    key_file: a key file of the user's own (--key=FILE): 64 hex digits; never created.
    create: create the workdir's key if it has none (generation); False to only read it
      (detection: a missing key is then an error, not a new key that detects nothing).

  Returns:
    32 bytes.

  Raises:
    KeyFileError: the key file is missing (given explicitly, or create=False), unreadable,
      accessible by others, or not 64 hex digits.
    ValueError: neither a workdir nor a key file.
  """
  if key_file is not None:
    path = pathlib.Path(key_file)
    return _parse_watermark_key(read_private(path, "watermark key"), path)
  if workdir is None:
    raise ValueError("no watermark key: pass --workdir=DIR (its provenance/watermark.key) or "
                     "--key=FILE")
  path = provenance_dir(workdir) / WATERMARK_KEY_FILE
  if not path.exists():
    if not create:
      raise KeyFileError(f"workdir {workdir} has no watermark key ({path}): pass --key=FILE with "
                         f"the key the videos were made with, or the workdir that made them")
    folder = _private_folder(workdir)
    with _creation_lock(folder):
      if not path.exists():
        _write_new(path, os.urandom(WATERMARK_KEY_BYTES).hex().encode() + b"\n", 0o600)
        logging.info("Created the watermark key %s (owner-only; keep it secret: it detects and "
                     "forges this workdir's watermark).", path)
  return _parse_watermark_key(read_private(path, "watermark key"), path)


def signer_files(workdir: PathLike | None = None, key_file: PathLike | None = None,
                 cert_file: PathLike | None = None,
                 create: bool = True) -> tuple[pathlib.Path, pathlib.Path]:
  """The C2PA signing key and certificate chain: the given pair, else the workdir's.

  Args:
    workdir: the run's directory; its pair is WORKDIR/provenance/signing.{key,crt}.
    key_file, cert_file: a PEM key and certificate chain of the user's own, given together;
      never created. The key may be EC (P-256/384/521), Ed25519 or RSA.
    create: create the workdir's pair (and its local CA certificate) if it has none.

  Returns:
    (key_path, cert_path), checked: readable, the key private, the certificate certifying it.

  Raises:
    KeyFileError: a file is missing (given explicitly, or create=False), unreadable, malformed,
      the key is accessible by others, or the certificate does not certify the key.
    ValueError: only one of key_file and cert_file, or neither a workdir nor a pair.
  """
  if (key_file is None) != (cert_file is None):
    raise ValueError("pass the signing key and its certificate together (key_file and "
                     "cert_file), or neither to use the workdir's")
  if key_file is not None:
    key_path, cert_path = pathlib.Path(key_file), pathlib.Path(cert_file)
    load_signer(key_path, cert_path)
    return key_path, cert_path
  if workdir is None:
    raise ValueError("no signing key: pass --workdir=DIR (its provenance/signing.key) or a key "
                     "and certificate of your own")
  folder = provenance_dir(workdir)
  key_path, cert_path = folder / SIGNING_KEY_FILE, folder / SIGNING_CERT_FILE
  if not (key_path.exists() and cert_path.exists()):
    if not create:
      raise KeyFileError(f"workdir {workdir} has no signing key and certificate ({key_path}, "
                         f"{cert_path}): generate a video there first, or pass your own pair")
    folder = _private_folder(workdir)
    with _creation_lock(folder):
      if key_path.exists() != cert_path.exists():
        present, missing = (key_path, cert_path) if key_path.exists() else (cert_path, key_path)
        raise KeyFileError(f"{present} exists without {missing}: restore {missing}, or delete "
                           f"{present} to create a new signing key and certificate")
      if not key_path.exists():
        # A run that died creating the pair may have left its CA alone: it vouches for nothing.
        (folder / SIGNING_CA_FILE).unlink(missing_ok=True)
        key_pem, cert_pem, ca_pem = _new_signer()
        _write_new(folder / SIGNING_CA_FILE, ca_pem, 0o644)
        _write_new(cert_path, cert_pem, 0o644)
        _write_new(key_path, key_pem, 0o600)
        logging.info("Created the C2PA signing key %s (owner-only; keep it secret) and its "
                     "certificate %s, issued by the local CA %s.", key_path, cert_path,
                     folder / SIGNING_CA_FILE)
  load_signer(key_path, cert_path)
  return key_path, cert_path
