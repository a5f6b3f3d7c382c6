"""Sealed values: a person's nin and free text encrypted under that person's data key, so that
destroying the key (erasure, docs/retention.md "Erasure") makes every copy unreadable.

A sealed value is a string, so it fits the Avro `string` fields and the JSON stores unchanged:
`sealed:v1:<key version>:<base64url(nonce || ciphertext || tag)>`, AES-256-GCM with a 96-bit
random nonce. The associated data binds it to the subject key, the key version and the field
path (`subject.nin`, `payload.ward`), so a sealed value copied to another person's or another
field's place does not open. A data key is 256 random bits, stored only wrapped (AES-256-GCM)
under a key-encryption key derived from the `person_key_secret` setting
(`carebus.adapters.person_keys`); the public local default is refused outside development.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from carebus.runtime.config import (
    LOCAL_PERSON_KEY_SECRET,
    Settings,
    production_secret,
)

PREFIX: Final = "sealed:v1:"
DATA_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_WRAPPED_V1: Final = b"\x01"
_KEK_INFO: Final = b"carebus person data keys v1"

# The fields of an event record (and of every copy made from it: deliveries, alerts, the event
# store) that hold the nin or free text: (object, field). Identifiers a client chooses are not
# here: the input rule refuses a nin in them (docs/design.md, "Text and identifiers").
SEALED_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("subject", "nin"),
    ("payload", "ward"),
    ("payload", "service"),
    ("payload", "dps_contact"),
    ("emergency", "justification"),
    ("emergency", "accountable"),
)


class SealedUnreadableError(Exception):
    """A sealed value does not open: its key is erased or unknown, or the value was moved or
    altered. Names the field only, never a value."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


@dataclass(frozen=True, slots=True)
class DataKey:
    """One version of a person's data key; `key` None once it is erased."""

    subject_key: str
    version: int
    key: bytes | None = field(repr=False)

    @property
    def erased(self) -> bool:
        return self.key is None


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _associated(subject_key: str, version: int, path: str) -> bytes:
    return f"carebus sealed v1|{subject_key}|{version}|{path}".encode()


def seal(data_key: DataKey, path: str, value: str, nonce: bytes | None = None) -> str:
    """`value` sealed under `data_key` for the field `path` of the person's records."""
    if data_key.key is None:
        raise SealedUnreadableError(path, "cannot seal under an erased key")
    nonce = os.urandom(_NONCE_BYTES) if nonce is None else nonce
    associated = _associated(data_key.subject_key, data_key.version, path)
    sealed = AESGCM(data_key.key).encrypt(nonce, _padded(value.encode("utf-8")), associated)
    encoded = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
    return f"{PREFIX}{data_key.version}:{encoded}"


def sealed_version(value: str) -> int:
    """The key version a sealed value names (ValueError if it is not a sealed value)."""
    if not value.startswith(PREFIX):
        raise ValueError("not a sealed value")
    version, _, _ = value[len(PREFIX) :].partition(":")
    if not version.isascii() or not version.isdigit():
        raise ValueError("not a sealed value")
    return int(version)


def open_sealed(keys: Keyring, subject_key: str, path: str, value: str) -> str:
    """The clear text of a sealed `value` (SealedUnreadableError if it does not open)."""
    try:
        version = sealed_version(value)
        _, _, encoded = value[len(PREFIX) :].partition(":")
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (ValueError, binascii.Error):
        raise SealedUnreadableError(path, "not a sealed value") from None
    key = keys.get(subject_key, version)
    if key is None:
        raise SealedUnreadableError(path, "the person's data key is erased or unknown")
    associated = _associated(subject_key, version, path)
    try:
        plain = AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        raise SealedUnreadableError(path, "does not open under the person's data key") from None
    return plain.rstrip(b"\x00").decode("utf-8")


# The clear text is padded with NUL bytes (which no accepted text holds: the input rule refuses
# U+0000) to the next of these sizes, so a sealed ward's length does not tell which ward it is.
_PAD_TO: Final = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def _padded(plain: bytes) -> bytes:
    size = next((s for s in _PAD_TO if len(plain) <= s), -(-len(plain) // 4096) * 4096)
    return plain.ljust(size, b"\x00")


@dataclass(frozen=True, slots=True)
class Keyring:
    """The data keys a reader holds for one read: (subject key, version) -> key, or None for an
    erased version."""

    keys: Mapping[tuple[str, int], bytes | None]

    @classmethod
    def of(cls, data_keys: list[DataKey]) -> Keyring:
        return cls({(k.subject_key, k.version): k.key for k in data_keys})

    def get(self, subject_key: str, version: int) -> bytes | None:
        return self.keys.get((subject_key, version))


def seal_record(record: Mapping[str, Any], data_key: DataKey) -> dict[str, Any]:
    """A copy of an event record (`carebus.domain.events.event_to_record`) with its nin and free
    text sealed; the input is left as it was."""
    sealed = dict(record)
    for obj, name in SEALED_FIELDS:
        part = sealed.get(obj)  # with the fields of the same object sealed before
        if isinstance(part, Mapping) and isinstance(part.get(name), str):
            sealed[obj] = {**part, name: seal(data_key, f"{obj}.{name}", part[name])}
    return sealed


def open_body(body: Mapping[str, Any], subject_key: str, keys: Keyring) -> dict[str, Any]:
    """A delivery's or an alert's JSON as its recipient reads it: sealed fields opened.

    If any sealed field of the person does not open (the person was erased), the person's fields
    read as erased: `"subject": null`, `"erased": true` and every sealed free-text field null; a
    body with nothing sealed (written before sealing) is returned as it was."""
    opened = dict(body)
    erased = False
    for obj, name in SEALED_FIELDS:
        part = opened.get(obj)  # with the fields of the same object opened before
        if not isinstance(part, Mapping) or not is_sealed(part.get(name)):
            continue
        copy = dict(part)
        try:
            copy[name] = open_sealed(keys, subject_key, f"{obj}.{name}", part[name])
        except SealedUnreadableError:
            copy[name] = None
            erased = True
        opened[obj] = copy
    if erased:
        opened["subject"] = None
        opened["erased"] = True
    return opened


# A sealed value inside a text (an emergency alert's summary quotes the justification).
_SEALED_IN_TEXT: Final = re.compile(r"sealed:v1:[0-9]+:[A-Za-z0-9_-]+")
ERASED_TEXT: Final = "(erased)"


def open_text(
    text: str, subject_key: str, keys: Keyring, paths: tuple[str, ...]
) -> tuple[str, bool]:
    """`text` with each sealed value in it opened (it was sealed for one of `paths`), and
    whether one of them was erased (it reads `(erased)` then)."""
    parts: list[str] = []
    erased = False
    end = 0
    for match in _SEALED_IN_TEXT.finditer(text):
        parts.append(text[end : match.start()])
        clear = _open_any(keys, subject_key, paths, match.group(0))
        erased = erased or clear is None
        parts.append(ERASED_TEXT if clear is None else clear)
        end = match.end()
    parts.append(text[end:])
    return "".join(parts), erased


def _open_any(keys: Keyring, subject_key: str, paths: tuple[str, ...], value: str) -> str | None:
    for path in paths:
        try:
            return open_sealed(keys, subject_key, path, value)
        except SealedUnreadableError:
            continue
    return None


class KeyWrap:
    """Wraps and unwraps data keys (AES-256-GCM) under the key-encryption key of a setting."""

    def __init__(self, key_secret: str) -> None:
        kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEK_INFO).derive(
            key_secret.encode("utf-8")
        )
        self._aead = AESGCM(kek)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyWrap:
        """The wrap under the configured key; production refuses the public local default."""
        # HKDF does not stretch a weak secret: a database dump would let anyone guess it
        # offline, unwrap every key and open every sealed copy.
        secret = production_secret(settings, "person_key_secret", LOCAL_PERSON_KEY_SECRET)
        return cls(secret)

    def wrap(self, subject_key: str, version: int, data_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        associated = f"{subject_key}:{version}".encode()
        return _WRAPPED_V1 + nonce + self._aead.encrypt(nonce, data_key, associated)

    def unwrap(self, subject_key: str, version: int, wrapped: bytes | None) -> DataKey:
        """The data key, or an erased one when `wrapped` is None (SealedUnreadableError if the
        wrapped key does not open under this key-encryption key)."""
        if wrapped is None:
            return DataKey(subject_key, version, None)
        if wrapped[:1] != _WRAPPED_V1:
            raise SealedUnreadableError("person_keys.wrapped_key", "unknown format")
        nonce, ciphertext = wrapped[1 : 1 + _NONCE_BYTES], wrapped[1 + _NONCE_BYTES :]
        try:
            key = self._aead.decrypt(nonce, ciphertext, f"{subject_key}:{version}".encode())
        except InvalidTag:
            raise SealedUnreadableError(
                "person_keys.wrapped_key", "does not open with CAREBUS_PERSON_KEY_SECRET"
            ) from None
        return DataKey(subject_key, version, key)
