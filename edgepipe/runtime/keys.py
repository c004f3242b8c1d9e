"""Encrypted model files: the AES-256 key a device is given, and decryption into memory only.

Encryption itself is the host's job (edgepipe.encryption); this side never writes a
decrypted model to disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .bundle import inside
from .errors import BackendError, BadInputError, GateFailedError

KEY_ENV = "EDGEPIPE_MODEL_KEY"  # AES-256 key for encrypted bundles: 64 hex digits, or a file of them
ENCRYPTED_SUFFIX = ".enc"  # 12-byte nonce, then AES-256-GCM ciphertext and tag; AAD: the plain name


def parse_model_key(text: str, where: str) -> bytes:
    """A key is 64 hex digits (a file holding them, or the value itself)."""
    value = text.strip()
    candidate = Path(value)
    if len(value) != 64 and candidate.is_file():
        try:
            value = candidate.read_text(encoding="ascii", errors="replace").strip()
        except OSError as exc:
            raise BadInputError(f"{where}: cannot read the key file ({exc.strerror})") from None
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise BadInputError(f"{where}: not an AES-256 key (64 hex digits; `edgepipe keygen --kind aes256`)")
    return key


def model_key_id(key: bytes) -> str:
    return hashlib.sha256(b"edgepipe model key\0" + key).hexdigest()[:16]


def is_encrypted(manifest: dict[str, Any], name: str) -> bool:
    encryption = manifest.get("encryption")
    return bool(encryption) and name in encryption.get("files", [])


def model_bytes(bundle: Path, manifest: dict[str, Any], name: str, key: bytes | None) -> bytes | None:
    """The decrypted bytes of an encrypted model file, in memory only; None when it is not encrypted."""
    if not is_encrypted(manifest, name):
        return None
    encryption = manifest["encryption"]
    if key is None:
        raise BadInputError(f"{name} is encrypted: give the key with --key-file or ${KEY_ENV}")
    if model_key_id(key) != encryption["key_id"]:
        raise BadInputError(f"{name} is encrypted with key {encryption['key_id']}, not with the given key "
                            f"({model_key_id(key)})")
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise BackendError("encrypted bundles need the cryptography package: pip install cryptography") \
            from None
    try:
        blob = inside(bundle, name + ENCRYPTED_SUFFIX).read_bytes()
    except OSError as exc:
        raise BadInputError(f"{name}{ENCRYPTED_SUFFIX}: cannot read ({exc.strerror})") from None
    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], name.encode())
    except InvalidTag:
        raise GateFailedError(f"{name}{ENCRYPTED_SUFFIX}: authentication failed (tampered, or renamed from "
                              "another file)") from None
