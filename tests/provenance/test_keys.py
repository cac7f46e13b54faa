"""Tests for videogen/provenance/keys.py: secrets made private, reused, refused when exposed."""

import concurrent.futures
import contextlib
import logging
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from videogen.provenance import keys


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def _umask(mask: int):
  previous = os.umask(mask)
  try:
    yield
  finally:
    os.umask(previous)


def test_watermark_key_is_created_owner_only_and_reused(tmp_path):
  workdir = tmp_path / "run"
  with _umask(0):  # a permissive umask: the key must still come out 0600
    key = keys.watermark_key(workdir)
  path = workdir / "provenance" / "watermark.key"
  assert isinstance(key, bytes) and len(key) == 32
  assert _mode(path) == 0o600
  assert _mode(workdir / "provenance") == 0o700
  assert keys.watermark_key(workdir) == key
  assert keys.watermark_key(tmp_path / "other") != key  # random, not derived from anything


def test_signer_files_are_created_once_with_a_private_key_and_a_chained_certificate(tmp_path):
  workdir = tmp_path / "run"
  with _umask(0):
    key_path, cert_path = keys.signer_files(workdir)
  assert _mode(key_path) == 0o600
  contents = key_path.read_bytes(), cert_path.read_bytes()
  assert keys.signer_files(workdir) == (key_path, cert_path)
  assert (key_path.read_bytes(), cert_path.read_bytes()) == contents  # reused, not re-created
  private_key = serialization.load_pem_private_key(contents[0], password=None)
  certificate = x509.load_pem_x509_certificate(contents[1])
  assert certificate.public_key() == private_key.public_key()
  # Not self-signed (c2pa refuses that): issued by the workdir's CA, the trust anchor.
  anchor = x509.load_pem_x509_certificate(keys.trust_anchor_file(workdir).read_bytes())
  certificate.verify_directly_issued_by(anchor)
  assert certificate.subject != certificate.issuer
  assert str(workdir.name) not in certificate.subject.rfc4514_string()


def test_concurrent_first_uses_agree_on_one_key(tmp_path):
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    found = set(pool.map(lambda _: keys.watermark_key(tmp_path / "run"), range(8)))
  assert len(found) == 1


def test_an_explicit_key_file_is_read_and_never_created(tmp_path):
  key_file = tmp_path / "my.key"
  fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
  os.write(fd, (b"ab" * 32) + b"\n")
  os.close(fd)
  assert keys.watermark_key(tmp_path / "run", key_file=key_file) == b"\xab" * 32
  assert not (tmp_path / "run").exists()  # the workdir's key is not touched


def test_a_missing_explicit_key_file_is_a_clear_error(tmp_path):
  missing = tmp_path / "nowhere.key"
  with pytest.raises(keys.KeyFileError, match=f"{missing} does not exist"):
    keys.watermark_key(tmp_path / "run", key_file=missing)
  assert not missing.exists()
  with pytest.raises(keys.KeyFileError, match="does not exist"):
    keys.signer_files(key_file=missing, cert_file=tmp_path / "nowhere.crt")


def test_create_false_does_not_make_a_key(tmp_path):
  with pytest.raises(keys.KeyFileError, match="has no watermark key"):
    keys.watermark_key(tmp_path / "run", create=False)
  with pytest.raises(keys.KeyFileError, match="has no signing key"):
    keys.signer_files(tmp_path / "run", create=False)
  assert not (tmp_path / "run" / "provenance").exists()


def test_a_key_file_others_can_read_is_refused(tmp_path):
  keys.watermark_key(tmp_path / "run")
  path = tmp_path / "run" / "provenance" / "watermark.key"
  path.chmod(0o644)
  with pytest.raises(keys.KeyFileError, match=r"accessible by others \(mode 0644\).*chmod 600"):
    keys.watermark_key(tmp_path / "run")
  key_path, cert_path = keys.signer_files(tmp_path / "run")
  key_path.chmod(0o640)
  with pytest.raises(keys.KeyFileError, match="accessible by others"):
    keys.signer_files(tmp_path / "run")


def test_a_key_path_that_is_a_folder_is_a_clear_error(tmp_path):
  with pytest.raises(keys.KeyFileError, match="is not a file"):
    keys.watermark_key(key_file=tmp_path)


def test_an_unreadable_key_file_is_a_clear_error(tmp_path, monkeypatch):
  key_file = tmp_path / "locked.key"
  os.close(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o000))
  if os.geteuid() == 0:  # root reads a mode-000 file: make the read fail as it would for a user
    def refuse(self):
      raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(type(key_file), "read_bytes", refuse)
  with pytest.raises(keys.KeyFileError, match=r"cannot read watermark key .*Permission denied"):
    keys.watermark_key(key_file=key_file)


def test_a_malformed_key_file_is_refused_without_echoing_it(tmp_path):
  key_file = tmp_path / "bad.key"
  secret = "not-hex-but-maybe-a-secret"
  fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
  os.write(fd, secret.encode())
  os.close(fd)
  with pytest.raises(keys.KeyFileError, match="is not 64 hex digits") as raised:
    keys.watermark_key(key_file=key_file)
  assert secret not in str(raised.value)


def test_a_signing_pair_must_belong_together(tmp_path):
  key_a, _ = keys.signer_files(tmp_path / "a")
  _, cert_b = keys.signer_files(tmp_path / "b")
  with pytest.raises(keys.KeyFileError, match="does not certify the key"):
    keys.signer_files(key_file=key_a, cert_file=cert_b)
  with pytest.raises(ValueError, match="together"):
    keys.signer_files(key_file=key_a)
  # A user's own pair elsewhere is used as given, and nothing is created in the workdir.
  assert keys.signer_files(tmp_path / "c", key_file=key_a, cert_file=key_a.with_suffix(".crt")
                           ) == (key_a, key_a.with_suffix(".crt"))
  assert not (tmp_path / "c").exists()


def test_a_half_pair_in_the_workdir_is_not_silently_replaced(tmp_path):
  key_path, cert_path = keys.signer_files(tmp_path / "run")
  cert_path.unlink()
  key_before = key_path.read_bytes()
  with pytest.raises(keys.KeyFileError, match="exists without"):
    keys.signer_files(tmp_path / "run")
  assert key_path.read_bytes() == key_before


def test_creating_keys_logs_no_key_material(tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    watermark = keys.watermark_key(tmp_path / "run")
    key_path, _ = keys.signer_files(tmp_path / "run")
  assert "watermark.key" in caplog.text and "signing.key" in caplog.text  # the capture works
  private_pem = key_path.read_text()
  body = "".join(private_pem.strip().splitlines()[1:-1])
  for secret in (watermark.hex(), body, body[:40]):
    assert secret not in caplog.text
