"""Ed25519 signatures of published model versions: the read side (load public keys, check a signature).

Why: the sha256 list in ``card.json`` proves the files are the ones the card names, not who wrote the card.
Anyone who can write to the model folder can replace the weights and their hashes together. A version signed
with the publisher's private key carries ``signature.json``, an Ed25519 signature of the exact bytes of its
``card.json``. Since the card lists the sha256 of every file and golden image, the signature covers them all.
A worker configured with ``infer.trusted_keys`` loads and swaps in only versions whose signature verifies
under one of those public keys. Without trusted keys nothing is checked, and the worker says so at start.

Signing (private keys, writing the file) is offline: :mod:`linecam.lifecycle.signing`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CARD_FILE = "card.json"
SIGNATURE_FILE = "signature.json"
ALGORITHM = "ed25519"
#: prefixed to the card's bytes before signing, so a signature made for anything else never verifies here.
CONTEXT = b"linecam model version card v1\n"

__all__ = ["ALGORITHM", "CONTEXT", "SIGNATURE_FILE", "SignatureError", "TrustedKey", "key_id", "load_public_key",
           "load_trusted_keys", "read_signature", "signed_payload", "verify_signature"]


class SignatureError(RuntimeError):
    """A version is unsigned, signed by an unknown key, or its signature does not match; names the file."""


@dataclass(frozen=True)
class TrustedKey:
    """One public key the line trusts, with where it came from (for messages)."""

    key_id: str
    path: Path
    key: Any  # cryptography's Ed25519PublicKey


def key_id(public_key: Any) -> str:
    """A short stable name of a public key: the first 16 hex digits of the sha256 of its raw 32 bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str | Path) -> TrustedKey:
    """An Ed25519 public key from a PEM file (``linecam keygen --signing`` writes one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{p}: cannot read the public key ({exc.strerror or exc})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SignatureError(f"{p}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{p}: not an Ed25519 public key ({type(key).__name__})")
    return TrustedKey(key_id(key), p, key)


def load_trusted_keys(paths: Sequence[str | Path]) -> list[TrustedKey]:
    """Every configured public key; the first unreadable one raises SignatureError naming it."""
    return [load_public_key(p) for p in paths]


def signed_payload(version_dir: str | Path) -> bytes:
    """What a signature covers: the context line and the exact bytes of the version's card."""
    path = Path(version_dir) / CARD_FILE
    try:
        return CONTEXT + path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the card ({exc.strerror or exc})") from None


def read_signature(version_dir: str | Path) -> dict[str, Any] | None:
    """The version's signature record, None when it has none; SignatureError when the file is malformed."""
    path = Path(version_dir) / SIGNATURE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{path}: not a readable JSON signature ({exc})") from None
    if (not isinstance(record, dict) or record.get("algorithm") != ALGORITHM
            or not isinstance(record.get("key_id"), str) or not isinstance(record.get("signature"), str)):
        raise SignatureError(f"{path}: expected {{'algorithm': 'ed25519', 'key_id': ..., 'signature': ...}}")
    return record


def verify_signature(version_dir: str | Path, trusted: Sequence[TrustedKey]) -> str:
    """Check the version's signature against the trusted keys -> the id of the key that signed it.

    Raises SignatureError naming the folder when the version is unsigned, signed by a key not trusted, or when
    the signature does not match the card's bytes (a card rewritten after signing).
    """
    from cryptography.exceptions import InvalidSignature

    d = Path(version_dir)
    if not trusted:
        raise SignatureError(f"{d}: no trusted keys configured to check its signature against")
    record = read_signature(d)
    names = ", ".join(f"{k.key_id} ({k.path})" for k in trusted)
    if record is None:
        raise SignatureError(f"{d}: unsigned version (no {SIGNATURE_FILE}); the line trusts only versions signed by "
                             f"{names}; sign it with `linecam models sign`")
    by_id = {k.key_id: k for k in trusted}
    key = by_id.get(record["key_id"])
    if key is None:
        raise SignatureError(f"{d / SIGNATURE_FILE}: signed by key {record['key_id']}, which is not trusted "
                             f"(trusted: {names})")
    try:
        signature = base64.b64decode(record["signature"], validate=True)
    except ValueError:
        raise SignatureError(f"{d / SIGNATURE_FILE}: the signature is not base64") from None
    try:
        key.key.verify(signature, signed_payload(d))
    except InvalidSignature:
        raise SignatureError(f"{d / SIGNATURE_FILE}: the signature does not match {d / CARD_FILE} (the card was "
                             f"changed after key {key.key_id} signed it); refused") from None
    return key.key_id
