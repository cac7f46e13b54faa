"""Tests for videogen/provenance/manifest.py: a signed C2PA manifest that a changed byte breaks."""

import datetime
import logging
import os
import struct

import imageio.v3 as iio
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen.provenance import keys
from videogen.provenance import manifest

PROMPT = "a large red circle moving up-right"
CLAIM = {"checkpoint": "sha256:0123abcd", "mode": "t2v", "seed": 7, "prompt": PROMPT}


@pytest.fixture(scope="module")
def clip():
  return world.generate(0, seed=0, frames=9, height=32, width=32)["video"]


@pytest.fixture
def video(tmp_path, clip):
  path = tmp_path / "out" / "000_t2v.mp4"
  video_io.write_video(path, clip, fps=8)
  return path


@pytest.fixture
def signer(tmp_path):
  key_path, cert_path = keys.signer_files(tmp_path / "run")
  return {"key_path": key_path, "cert_path": cert_path}


def _boxes(data: bytes) -> dict[str, tuple[int, int]]:
  """Top-level ISO BMFF box type -> (offset, size) of an mp4 (the last box of each type)."""
  boxes, offset = {}, 0
  while offset < len(data):
    size, kind = struct.unpack(">I4s", data[offset:offset + 8])
    if size == 1:
      size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
    size = size or len(data) - offset
    boxes[kind.decode("latin-1")] = (offset, size)
    offset += size
  return boxes


def test_a_signed_mp4_verifies_valid_with_its_claim(video, signer, tmp_path):
  frames_before = video_io.read_video(video)[0]
  embedded = manifest.sign(video, claim=CLAIM, **signer)
  found = manifest.verify(video)
  assert found.status == manifest.VALID
  assert found.claim == embedded
  assert {name: found.claim[name] for name in CLAIM} == CLAIM
  assert found.claim["generator"] == "videogen" and found.claim["version"]
  signed_at = datetime.datetime.fromisoformat(found.claim["time"])
  assert abs(datetime.datetime.now(datetime.timezone.utc) - signed_at).total_seconds() < 600
  assert found.trusted is None and set(found.failures) <= manifest.ACCEPTED_FAILURES
  # Signing adds a box; the video itself is untouched and nothing is left beside it.
  np.testing.assert_array_equal(video_io.read_video(video)[0], frames_before)
  assert sorted(p.name for p in video.parent.iterdir()) == [video.name]


def test_one_flipped_media_byte_makes_it_invalid(video, signer):
  manifest.sign(video, claim=CLAIM, **signer)
  data = bytearray(video.read_bytes())
  boxes = _boxes(bytes(data))
  mdat_offset, mdat_size = boxes["mdat"]
  manifest_offset, manifest_size = boxes["uuid"]  # c2pa's manifest box
  flip = mdat_offset + 8 + (mdat_size - 8) // 2
  assert not manifest_offset <= flip < manifest_offset + manifest_size
  data[flip] ^= 0x01
  video.write_bytes(bytes(data))
  found = manifest.verify(video)
  assert found.status == manifest.INVALID and found.claim is None
  assert "assertion.bmffHash.mismatch" in found.failures


def test_an_mp4_without_a_manifest_is_absent(video):
  assert manifest.verify(video) == manifest.Verification(manifest.ABSENT)


def test_the_prompt_is_withheld_on_request(video, signer, tmp_path, clip):
  claim = {**CLAIM, "negative_prompt": "a blue square"}
  manifest.sign(video, claim=claim, include_prompt=False, **signer)
  found = manifest.verify(video)
  assert found.status == manifest.VALID
  assert "prompt" not in found.claim and "negative_prompt" not in found.claim
  assert found.claim["seed"] == CLAIM["seed"]
  assert PROMPT.encode() not in video.read_bytes() and b"a blue square" not in video.read_bytes()
  # The control: an included prompt is stored as plain text, so the check above can fail.
  other = tmp_path / "with_prompt.mp4"
  video_io.write_video(other, clip, fps=8)
  manifest.sign(other, claim=claim, **signer)
  assert PROMPT.encode() in other.read_bytes()


def test_no_key_material_reaches_the_file_or_the_log(video, signer, tmp_path, caplog):
  with caplog.at_level(logging.DEBUG):
    watermark = keys.watermark_key(tmp_path / "run")
    manifest.sign(video, claim=CLAIM, **signer)
    manifest.verify(video)
  private_key = serialization.load_pem_private_key(signer["key_path"].read_bytes(), None)
  scalar = private_key.private_numbers().private_value.to_bytes(32, "big")
  der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
  pem_body = "".join(signer["key_path"].read_text().strip().splitlines()[1:-1])
  data = video.read_bytes()
  for secret in (scalar, der, pem_body.encode(), watermark, watermark.hex().encode()):
    assert secret not in data
  for secret in (scalar.hex(), pem_body[:40], watermark.hex()):
    assert secret not in caplog.text
  # The control: the public certificate does travel in the manifest, found by the same scan.
  certificate = x509.load_pem_x509_certificate(signer["cert_path"].read_bytes())
  assert certificate.public_bytes(serialization.Encoding.DER) in data


def test_the_trust_anchor_tells_this_workdirs_signer_from_another(video, signer, tmp_path):
  manifest.sign(video, claim=CLAIM, **signer)
  own = manifest.verify(video, trust_anchor=keys.trust_anchor_file(tmp_path / "run"))
  keys.signer_files(tmp_path / "elsewhere")
  other = manifest.verify(video, trust_anchor=keys.trust_anchor_file(tmp_path / "elsewhere"))
  assert (own.status, own.trusted, own.failures) == (manifest.VALID, True, ())
  assert (other.status, other.trusted) == (manifest.VALID, False)


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_png_and_gif_are_signed_too(tmp_path, clip, signer, suffix):
  path = tmp_path / f"out{suffix}"
  if suffix == ".png":
    iio.imwrite(path, clip[0])
  else:
    video_io.write_video(path, clip, fps=8)
  assert manifest.verify(path).status == manifest.ABSENT
  manifest.sign(path, claim={**CLAIM, "mode": "t2i"}, **signer)
  assert manifest.verify(path).status == manifest.VALID
  assert manifest.verify(path).claim["mode"] == "t2i"


def test_a_failed_signing_leaves_the_file_as_it_was(tmp_path, signer):
  broken = tmp_path / "broken.mp4"
  broken.write_bytes(b"not an mp4 at all")
  mode = os.stat(broken).st_mode
  with pytest.raises(ValueError, match="c2pa could not sign"):
    manifest.sign(broken, claim=CLAIM, **signer)
  assert broken.read_bytes() == b"not an mp4 at all" and os.stat(broken).st_mode == mode
  assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4", "run"]


def test_wrong_claims_and_suffixes_are_clear_errors(video, signer, tmp_path):
  with pytest.raises(ValueError, match="lacks seed"):
    manifest.sign(video, claim={"checkpoint": "x", "mode": "t2v"}, **signer)
  with pytest.raises(ValueError, match="sets version"):
    manifest.sign(video, claim={**CLAIM, "version": "9"}, **signer)
  with pytest.raises(ValueError, match="write the video as .mp4"):
    manifest.sign(tmp_path / "clip.webm", claim=CLAIM, **signer)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    manifest.verify(tmp_path / "missing.mp4")
  assert manifest.verify(video).status == manifest.ABSENT  # nothing was signed
