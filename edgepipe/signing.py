"""Ed25519 keys and bundle signatures: prove a flashed bundle is the one the release pipeline built.

The manifest already holds every file's sha256, so signing its exact bytes covers
the whole bundle. The signature is a detached `manifest.sig` (JSON: algorithm, key
id, base64 signature). Checking lives in the device runtime (one implementation, usable
on a device without edgepipe); this module writes keys and signatures.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from edgepipe.errors import BadInputError
from edgepipe.extras import require
from edgepipe.runtime.bundle import MANIFEST_NAME, SIGNATURE_NAME
from edgepipe.runtime.signature import key_id


def _crypto() -> Any:
    require("cryptography", "signing bundles")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def generate_keypair(private_path: Path, force: bool = False) -> tuple[Path, Path]:
    """KEY (private, PKCS#8 PEM, mode 0600) and KEY.pub (public PEM)."""
    serialization, ed25519 = _crypto()
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise BadInputError(f"{path}: exists; use --force to replace the key pair")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise BadInputError(f"cannot write the key pair ({exc.filename}): {exc.strerror}") from None
    return private_path, public_path


def load_private_key(path: Path) -> Any:
    """Read and check the signing key before a build starts, so a bad key costs no build time."""
    serialization, ed25519 = _crypto()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"--sign {path}: cannot read the key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"--sign {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BadInputError(f"--sign {path}: not an Ed25519 key (make one with `edgepipe keygen`)")
    return key


def sign_bundle(bundle: Path, key: Any) -> dict[str, str]:
    serialization, _ = _crypto()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = key.sign((bundle / MANIFEST_NAME).read_bytes())
    record = {"algorithm": "ed25519", "key_id": key_id(raw), "signed": MANIFEST_NAME,
              "signature": base64.b64encode(signature).decode()}
    (bundle / SIGNATURE_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
