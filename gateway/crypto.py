"""Encryption at rest (MultiFernet) and signed tokens (itsdangerous), from the secret keys."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from itsdangerous import BadSignature, URLSafeTimedSerializer


def _fernet_key(secret: str) -> bytes:
    # Derive a distinct key for encryption so the signing secret is never a Fernet key itself.
    digest = hashlib.sha256(b"gateway-encryption:" + secret.encode()).digest()
    return base64.urlsafe_b64encode(digest)


class Box:
    """Encrypts with the first secret, decrypts with any: rotating keys needs no downtime."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._fernet = MultiFernet([Fernet(_fernet_key(s)) for s in secrets])

    def encrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        return self._fernet.decrypt(value.encode()).decode()

    def rotate(self, value: str) -> str:
        return self._fernet.rotate(value.encode()).decode()


class Signer:
    """One itsdangerous namespace per purpose, each with its own salt and max age."""

    def __init__(self, secrets: tuple[str, ...], purpose: str, max_age: int | None) -> None:
        # itsdangerous signs with the last key and accepts any: newest goes last.
        self._serializer = URLSafeTimedSerializer(list(reversed(secrets)), salt=f"gateway.{purpose}")
        self.max_age = max_age

    def dumps(self, value: Any) -> str:
        return self._serializer.dumps(value)

    def loads(self, token: str, max_age: int | None = None) -> Any | None:
        try:
            return self._serializer.loads(token, max_age=max_age or self.max_age)
        except BadSignature:
            return None


__all__ = ["Box", "InvalidToken", "Signer"]
