"""Ed25519 signing of published model versions: make a key pair, sign a version (offline acts).

Why offline and separate from the line: the private key belongs on the machine (or the person) that releases
models, never on a line PC. The line holds only public keys (``infer.trusted_keys``) and checks signatures
with :mod:`linecam.modelstore.signing`. A signature covers the exact bytes of a version's ``card.json``, which
lists the sha256 of every file, so it is made last, after the version is complete and read-only.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import stat
from pathlib import Path
from typing import Any

from linecam.files import atomic_write, write_key_file
from linecam.modelstore.signing import ALGORITHM, SIGNATURE_FILE, SignatureError, key_id, signed_payload

__all__ = ["generate_signing_key", "load_private_key", "sign_version"]

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def generate_signing_key(out_dir: str | Path, name: str = "model-signing", force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (PKCS#8 PEM private key, mode 0600) and ``NAME.pub`` (PEM public key, 0644) -> paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path, public_path = out / f"{name}{PRIVATE_SUFFIX}", out / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):  # refuse before writing either half of a pair
        if path.exists() and not force:
            raise FileExistsError(f"{path}: key file exists; refusing to overwrite (use --force)")
    write_key_file(private_path, private_pem, 0o600, force)
    write_key_file(public_path, public_pem, 0o644, force)
    return private_path, public_path


def load_private_key(path: str | Path) -> Any:
    """An Ed25519 private key from an unencrypted PEM file that only its owner can read."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
        data = p.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{p}: cannot read the private key ({exc.strerror or exc})") from None
    if mode & 0o077:
        raise SignatureError(f"{p}: private key has mode {mode:04o}; it must be readable by its owner only (0600)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{p}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{p}: not an Ed25519 private key ({type(key).__name__})")
    return key


def sign_version(version_dir: str | Path, private_key: str | Path, force: bool = False) -> str:
    """Sign a published version's card -> the signing key's id; writes ``signature.json`` into the version.

    The version's files are checked against the card first (a corrupted version is never signed). A version
    that is already signed keeps its signature unless ``force``. Published folders are read-only: the folder
    is opened for the one write and closed again.
    """
    from linecam.modelstore.versions import verify_version

    d = Path(version_dir)
    verify_version(d)
    target = d / SIGNATURE_FILE
    if target.exists() and not force:
        raise SignatureError(f"{target}: the version is already signed; use --force to replace its signature")
    key = load_private_key(private_key)
    signer = key_id(key.public_key())
    record = {"algorithm": ALGORITHM, "key_id": signer,
              "signature": base64.b64encode(key.sign(signed_payload(d))).decode(),
              "signed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    folder_mode = stat.S_IMODE(d.stat().st_mode)
    os.chmod(d, folder_mode | stat.S_IWUSR)
    try:
        if target.exists():
            target.unlink()
        atomic_write(target, (json.dumps(record, indent=2) + "\n").encode(), durable=True)
        target.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    finally:
        os.chmod(d, folder_mode)
    return signer
