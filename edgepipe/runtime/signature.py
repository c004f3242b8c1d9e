"""Checking a bundle's Ed25519 signature (manifest.sig over manifest.json's exact bytes).

The manifest holds every file's sha256, so a good signature plus matching hashes proves
the whole bundle; `verify_files` checks the hashes. Signing lives on the host
(edgepipe.signing); checking lives here so a device without edgepipe can do it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from .bundle import MANIFEST_NAME, SIGNATURE_NAME
from .errors import BackendError, BadInputError


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def check_signature(bundle: Path, public_key_pem: bytes, key_name: str = "the public key") -> list[str]:
    """Why manifest.json is not signed by this key, or nothing."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise BackendError("checking a signature needs the cryptography package: "
                           "pip install cryptography") from None
    try:
        public = serialization.load_pem_public_key(public_key_pem)
    except ValueError:
        raise BadInputError(f"{key_name}: not a PEM public key") from None
    if not isinstance(public, Ed25519PublicKey):
        raise BadInputError(f"{key_name}: not an Ed25519 public key")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    path = bundle / SIGNATURE_NAME
    if not path.is_file():
        return [f"{SIGNATURE_NAME}: missing: the bundle is not signed"]
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        signature = base64.b64decode(record["signature"], validate=True)
        signer = str(record["key_id"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
        return [f"{SIGNATURE_NAME}: not a signature record written by edgepipe"]
    if signer != key_id(raw):
        return [f"{SIGNATURE_NAME}: signed by key {signer}, not by {key_name} ({key_id(raw)})"]
    if not (bundle / MANIFEST_NAME).is_file():
        return [f"{MANIFEST_NAME}: missing"]
    try:
        public.verify(signature, (bundle / MANIFEST_NAME).read_bytes())
    except InvalidSignature:
        return [f"{MANIFEST_NAME}: does not match its signature (the manifest or {SIGNATURE_NAME} "
                "was changed after signing)"]
    return []


def read_public_key(path: Path, flag: str = "--pubkey") -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"{flag} {path}: cannot read the public key ({exc.strerror})") from None
