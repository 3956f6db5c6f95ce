"""API keys from VAE_API_KEYS and VAE_API_KEYS_FILE, held as their SHA-256 digests.

Apart from service/api/auth.py (the middleware) so that `python -m service` can check the keys
up front without importing the web stack; see service/api/auth.py for how they are used.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import SecretStr

    from service.process.settings import Settings


class ApiKeyError(ValueError):
    """VAE_API_KEYS / VAE_API_KEYS_FILE cannot be used; the message names no key."""


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeys:
    """A set of keys, held as their SHA-256 digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(key.encode("ascii")) for key in keys)

    def __len__(self) -> int:
        return len(self._digests)

    def matches(self, presented: bytes) -> bool:
        """Whether `presented` is one of the keys: every key is compared, match or not."""
        digest = _digest(presented)
        found = False
        for key in self._digests:
            found |= hmac.compare_digest(digest, key)
        return found


def _check(keys: list[str], source: str) -> list[str]:
    for number, key in enumerate(keys, 1):
        if not all(0x21 <= ord(c) <= 0x7E for c in key):
            raise ApiKeyError(
                f"{source}: key {number} has characters other than printable ASCII "
                "(no spaces, no quotes needed): a header could never carry it"
            )
    return keys


def read_key_file(text: str) -> list[str]:
    """The keys of a key file: one per line, blank lines and # comments ignored."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_api_keys(settings: Settings) -> ApiKeys | None:
    """The keys of VAE_API_KEYS plus VAE_API_KEYS_FILE (read now), or None: auth off.

    A key file that cannot be read, or holds no key, is an error (never a silent "auth off").
    """
    return _load(settings.api_keys, settings.api_keys_file, "VAE_API_KEYS")


def load_admin_keys(settings: Settings) -> ApiKeys | None:
    """The keys of VAE_ADMIN_KEYS plus VAE_ADMIN_KEYS_FILE, or None: model management off."""
    return _load(settings.admin_keys, settings.admin_keys_file, "VAE_ADMIN_KEYS")


def _load(secrets: list[SecretStr], path: Path | None, variable: str) -> ApiKeys | None:
    keys = _check([k.get_secret_value() for k in secrets], variable)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ApiKeyError(
                f"{variable}_FILE {path}: cannot read it ({exc.strerror or exc})"
            ) from None
        except UnicodeDecodeError:
            raise ApiKeyError(f"{variable}_FILE {path}: not UTF-8 text") from None
        from_file = _check(read_key_file(text), f"{variable}_FILE {path}")
        if not from_file:
            raise ApiKeyError(
                f"{variable}_FILE {path} holds no key (every line is blank or a # comment)"
            )
        keys += from_file
    return ApiKeys(keys) if keys else None
