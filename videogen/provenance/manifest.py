"""The signed C2PA manifest of a generated video: what made it, embedded in the file, and checked.

`sign` embeds a C2PA manifest (c2pa-python) in an mp4 (or a png or gif) in place: a
`c2pa.actions.v2` "created" action with the IPTC digital source type trainedAlgorithmicMedia, and
one `videogen.generation` assertion holding the claim: generator, version, checkpoint hash, mode,
seed, time and, unless withheld, the prompt. c2pa adds its hard binding (for mp4 a BMFF hash of
every box but the manifest's own), so changing one byte of the video makes the manifest invalid.

`verify` reads it back with only what the file carries: the signer's certificate travels in the
manifest, so no key is needed. The statuses:

  "valid"    c2pa's validation state is "Valid" or "Trusted", and the active manifest's only
             failure codes are in ACCEPTED_FAILURES: the claim signature checks out against the
             embedded certificate (claimSignature.validated), every assertion matches its hash
             (assertion.hashedURI.match) and the asset matches the hard binding
             (assertion.bmffHash.match, assertion.dataHash.match).
  "invalid"  anything else with a manifest present: a failure such as assertion.bmffHash.mismatch
             (the media changed), claimSignature.mismatch (the manifest changed),
             signingCredential.invalid or .expired, or a manifest c2pa cannot parse.
  "absent"   no manifest (c2pa's ManifestNotFound), or a format that cannot carry one.

ACCEPTED_FAILURES holds one code, signingCredential.untrusted: a workdir's certificate comes from
its own local CA (see keys.py), which no trust list holds, so c2pa always reports it; it says
nothing about the integrity of the file. Whether the signer is the one a verifier expects is a
separate question that `trust_anchor` answers: given a CA certificate (the workdir's
provenance/signing_ca.crt), `Verification.trusted` says whether c2pa found the chain anchored in
it (state "Trusted").

Reading never touches the network (no remote manifests, no OCSP).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import pathlib
import shutil
import uuid
from typing import Any

try:
  import c2pa
except ImportError:  # an optional heavy dependency (16 MB): only signing and reading need it
  c2pa = None
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from videogen.provenance import keys

GENERATOR = "videogen"
CLAIM_LABEL = "videogen.generation"
# The claim fields every caller must give; `sign` adds generator, version and time.
REQUIRED_FIELDS = ("checkpoint", "mode", "seed")
RESERVED_FIELDS = ("generator", "version")
MIME_TYPES = {".mp4": "video/mp4", ".png": "image/png", ".gif": "image/gif"}
TRAINED_ALGORITHMIC_MEDIA = (
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia")

VALID, INVALID, ABSENT = "valid", "invalid", "absent"
ACCEPTED_STATES = frozenset({"Valid", "Trusted"})
ACCEPTED_FAILURES = frozenset({"signingCredential.untrusted"})

# Offline and quiet: no remote manifest or OCSP fetches; no thumbnail copied into the manifest.
_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
             "builder": {"thumbnail": {"enabled": False}}}


@dataclasses.dataclass(frozen=True)
class Verification:
  """What `verify` found in a file.

  Attributes:
    status: VALID, INVALID or ABSENT (see the module docstring).
    claim: the videogen.generation assertion when valid and present, else None.
    trusted: with a trust anchor, whether the signer chains to it; None without one.
    failures: c2pa's failure codes (or its error) behind an INVALID or ABSENT status.
  """
  status: str
  claim: dict[str, Any] | None = None
  trusted: bool | None = None
  failures: tuple[str, ...] = ()


def version() -> str:
  """The installed videogen's version, or "unknown" when run from a source tree without install."""
  try:
    return importlib.metadata.version(GENERATOR)
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def _mime_type(path: pathlib.Path) -> str:
  mime = MIME_TYPES.get(path.suffix.lower())
  if mime is None:
    raise ValueError(f"cannot sign {path}: a C2PA manifest is embedded in "
                     f"{', '.join(MIME_TYPES)} files; write the video as .mp4")
  return mime


def claim_assertion(claim: dict[str, Any], include_prompt: bool = True) -> dict[str, Any]:
  """The videogen.generation assertion `sign` embeds for a caller's claim.

  Args:
    claim: at least REQUIRED_FIELDS (checkpoint: a hash of the checkpoint, mode, seed); "time"
      (ISO 8601) defaults to now; "prompt" and any other JSON-serialisable fields pass through.
    include_prompt: False drops every field whose name contains "prompt" (prompt,
      negative_prompt, ...).

  Raises:
    ValueError: a required field is missing or a reserved one (generator, version) is given.
  """
  missing = [field for field in REQUIRED_FIELDS if field not in claim]
  if missing:
    raise ValueError(f"the manifest claim lacks {', '.join(missing)}: pass "
                     f"{', '.join(REQUIRED_FIELDS)} (the checkpoint's hash, the mode, the seed)")
  reserved = [field for field in RESERVED_FIELDS if field in claim]
  if reserved:
    raise ValueError(f"the manifest claim sets {', '.join(reserved)}, which sign() fills in: "
                     f"drop them from the claim")
  fields = {name: value for name, value in claim.items()
            if include_prompt or "prompt" not in name}
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  return {"generator": GENERATOR, "version": version(), "time": now, **fields}


def _algorithm(private_key: Any) -> c2pa.C2paSigningAlg:
  """The C2PA signing algorithm for a key: ES256/384/512 by curve, Ed25519, or PS256 for RSA."""
  if isinstance(private_key, ec.EllipticCurvePrivateKey):
    by_curve = {"secp256r1": c2pa.C2paSigningAlg.ES256, "secp384r1": c2pa.C2paSigningAlg.ES384,
                "secp521r1": c2pa.C2paSigningAlg.ES512}
    if private_key.curve.name in by_curve:
      return by_curve[private_key.curve.name]
  elif isinstance(private_key, ed25519.Ed25519PrivateKey):
    return c2pa.C2paSigningAlg.ED25519
  elif isinstance(private_key, rsa.RSAPrivateKey):
    return c2pa.C2paSigningAlg.PS256
  raise keys.KeyFileError("C2PA signs with EC P-256/384/521, Ed25519 or RSA keys: pass such a key")


def _require_c2pa(path: Any) -> None:
  if c2pa is None:
    raise ImportError(f"the C2PA manifest of {path} needs c2pa-python, which is not installed: "
                      f"pip install c2pa-python, or write without a manifest")


def sign(path: str | os.PathLike, *, key_path: str | os.PathLike, cert_path: str | os.PathLike,
         claim: dict[str, Any], include_prompt: bool = True) -> dict[str, Any]:
  """Embeds a signed C2PA manifest in a video or image file, replacing it atomically.

  Args:
    path: an .mp4 (or .png, .gif) file.
    key_path, cert_path: the signing key and certificate chain (`keys.signer_files`).
    claim: see `claim_assertion`.
    include_prompt: False keeps the prompt out of the manifest.

  Returns:
    The videogen.generation assertion embedded.

  Raises:
    ValueError: an unsupported suffix, a wrong claim, or c2pa failed to sign.
    keys.KeyFileError: the key or certificate is missing, unreadable, exposed or mismatched.
  """
  _require_c2pa(path)
  path = pathlib.Path(path)
  mime = _mime_type(path)
  if not path.is_file():
    raise ValueError(f"cannot sign {path}: it does not exist; write the video first")
  assertion = claim_assertion(claim, include_prompt)
  private_key, chain = keys.load_signer(key_path, cert_path)
  # c2pa reads PKCS#8; a user's key may be in another PEM form (SEC1, PKCS#1).
  key_pem = private_key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
  signer_info = c2pa.C2paSignerInfo(_algorithm(private_key), chain, key_pem, None)
  definition = {
      "claim_generator_info": [{"name": GENERATOR, "version": assertion["version"]}],
      "assertions": [
          {"label": "c2pa.actions.v2", "data": {"actions": [{
              "action": "c2pa.created", "when": assertion["time"],
              "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
              "softwareAgent": {"name": GENERATOR, "version": assertion["version"]}}]}},
          {"label": CLAIM_LABEL, "data": assertion},
      ],
  }
  # A sibling temporary file and a rename: a reader sees the old file or the signed one.
  temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{path.suffix}")
  try:
    with (c2pa.Context.from_dict(_SETTINGS) as context,
          c2pa.Signer.from_info(signer_info) as signer,
          c2pa.Builder(definition, context) as builder,
          open(path, "rb") as source, open(temporary, "w+b") as destination):
      builder.sign(signer, mime, source, destination)
    shutil.copymode(path, temporary)
    os.replace(temporary, path)
  except c2pa.C2paError as error:
    raise ValueError(f"c2pa could not sign {path}: {error}") from None
  finally:
    temporary.unlink(missing_ok=True)
  return assertion


def verify(path: str | os.PathLike, *, trust_anchor: str | os.PathLike | None = None
           ) -> Verification:
  """Checks the C2PA manifest of a file (see the module docstring for the statuses).

  Args:
    path: a video or image file.
    trust_anchor: a PEM CA certificate (e.g. `keys.trust_anchor_file(workdir)`) to tell whether
      the signer is the expected one; optional: validity needs no certificate but the embedded one.

  Raises:
    FileNotFoundError: `path` is not a file.
  """
  _require_c2pa(path)
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: pass the path of a video or image")
  settings = _SETTINGS
  if trust_anchor is not None:
    anchor = pathlib.Path(trust_anchor)
    if not anchor.is_file():
      raise FileNotFoundError(f"trust anchor {anchor} does not exist: pass the PEM CA "
                              f"certificate (WORKDIR/provenance/{keys.SIGNING_CA_FILE})")
    settings = {**_SETTINGS, "trust": {"trust_anchors": anchor.read_text()}}
  try:
    with c2pa.Context.from_dict(settings) as context:
      reader = c2pa.Reader.try_create(str(path), context=context)
      if reader is None:
        return Verification(ABSENT)
      with reader:
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
        manifest = reader.get_active_manifest() or {}
  except c2pa.C2paError.NotSupported as error:
    return Verification(ABSENT, failures=(str(error),))
  except c2pa.C2paError as error:
    return Verification(INVALID, failures=(str(error),))
  failures = tuple(item["code"] for item in results.get("activeManifest", {}).get("failure", []))
  if state not in ACCEPTED_STATES or not set(failures) <= ACCEPTED_FAILURES:
    return Verification(INVALID, failures=failures or (f"validation state {state}",))
  claim = next((assertion["data"] for assertion in manifest.get("assertions", [])
                if assertion.get("label") == CLAIM_LABEL), None)
  return Verification(VALID, claim=claim, trusted=None if trust_anchor is None
                      else state == "Trusted", failures=failures)
