"""Encryption at rest of a bundle's model files (AES-256-GCM), for devices that may be stolen.

What it protects: the weights on a device's storage, and on the way to it, from
anyone without the key; any change to an encrypted file (GCM authenticates it, with
the file's name as associated data, so files cannot be swapped). What it does not:
a running device holds the decrypted model in its process memory, so root on the
device (or a debugger, or a core dump) can read it; the key has to reach the
device somehow, and whoever reads it there reads the model. run.py decrypts into
memory only and never writes the plain model to disk.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from edgepipe.errors import BadInputError
from edgepipe.extras import require
from edgepipe.runtime.keys import ENCRYPTED_SUFFIX, KEY_ENV, model_key_id, parse_model_key

ALGORITHM = "AES-256-GCM"


def load_key(path: Path | None) -> bytes:
    """The key from --encrypt-key FILE, else from $EDGEPIPE_MODEL_KEY; never stored in the bundle."""
    if path is not None:
        if not path.is_file():
            raise BadInputError(f"--encrypt-key {path}: no such file")
        text, where = str(path), f"--encrypt-key {path}"  # parse_model_key reads the file
    else:
        text = os.environ.get(KEY_ENV, "")
        if not text:
            raise BadInputError(f"--encrypt needs a key: --encrypt-key FILE or ${KEY_ENV} "
                                "(make one with `edgepipe keygen --kind aes256 FILE`)")
        where = f"${KEY_ENV}"
    return parse_model_key(text, where)


def generate_key(path: Path, force: bool = False) -> Path:
    if path.exists() and not force:
        raise BadInputError(f"{path}: exists; use --force to replace the key")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    except OSError as exc:
        raise BadInputError(f"cannot write the key ({exc.filename}): {exc.strerror}") from None
    return path


def model_files(bundle: Path) -> list[str]:
    """The files that hold weights: the backend artifact and the portable ONNX (model.*)."""
    return sorted(p.name for p in bundle.iterdir()
                  if p.is_file() and p.name.startswith("model.") and p.suffix != ".json")  # not records


def encrypt_bundle(bundle: Path, key: bytes) -> dict[str, Any]:
    """Replace each model file by NAME.enc (random 96-bit nonce + ciphertext + tag); the manifest
    written afterwards records which files and the key's id (not the key)."""
    require("cryptography", "encrypting bundles")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(key)
    files = model_files(bundle)
    for name in files:
        plain = bundle / name
        nonce = os.urandom(12)  # unique per file and build: GCM must never reuse a nonce with a key
        (bundle / (name + ENCRYPTED_SUFFIX)).write_bytes(nonce + cipher.encrypt(nonce, plain.read_bytes(),
                                                                               name.encode()))
        plain.unlink()
    return {"algorithm": ALGORITHM, "key_id": model_key_id(key), "files": files,
            "aad": "file name", "note": "key not stored; run.py decrypts into memory only"}
