"""The broker's access rules (infra/kafka/acls.yaml) and the principals they name: loading the
file, turning it into ACL bindings, and applying both to a cluster idempotently.

Only the admin super user applies them (`carebus up`, the test session); a component's own
principal can neither create users nor grant itself anything (the broker refuses with
CLUSTER_AUTHORIZATION_FAILED).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from carebus.adapters.topic_admin import load_catalogue
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire import topics

ACLS: Final = PROJECT_ROOT / "infra" / "kafka" / "acls.yaml"
DELIVERIES_ALIAS: Final = "deliveries"
# PBKDF2 iterations of the credentials carebus creates: Kafka's minimum and default for SHA-512.
# Every password is 24 random bytes, which no iteration count makes harder to guess; each new
# connection pays the iterations on both ends (the test suite opens thousands).
SCRAM_ITERATIONS: Final = 4096
_KEYS: Final = frozenset({"read", "write", "groups", "internal_prefix"})


class AclFileError(ValueError):
    """infra/kafka/acls.yaml is malformed; the message names the entry."""


@dataclass(frozen=True)
class Grant:
    """One thing one principal may do: an ALLOW binding for any host."""

    principal: str
    resource: str  # "topic" or "group"
    name: str
    pattern: str  # "literal" or "prefixed"
    operation: str  # "read", "write", "create" or "describe"

    def binding(self) -> AclBinding:
        return AclBinding(
            ResourceType[self.resource.upper()],
            self.name,
            ResourcePatternType[self.pattern.upper()],
            f"User:{self.principal}",
            "*",
            AclOperation[self.operation.upper()],
            AclPermissionType.ALLOW,
        )


def load_grants(path: Path = ACLS, known_topics: Collection[str] | None = None) -> list[Grant]:
    """Every grant in the file; a malformed entry or a topic not in topics.yaml raises."""
    raw: Any = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("principals"), dict):
        raise AclFileError(f"{path}: expected a mapping with a 'principals' mapping")
    catalogued = set(known_topics) if known_topics is not None else _catalogued_topics()
    grants: list[Grant] = []
    for principal, entry in raw["principals"].items():
        where = f"{path}: principals.{principal}"
        if not isinstance(entry, dict) or not set(entry) <= _KEYS:
            raise AclFileError(f"{where} must be a mapping with keys among {sorted(_KEYS)}")
        lists = {key: _names(entry.get(key, []), f"{where}.{key}") for key in _KEYS}
        for key in ("read", "write"):
            for topic in _expand(lists[key]):
                if topic not in catalogued:
                    raise AclFileError(f"{where}.{key}: {topic!r} is not in topics.yaml")
                operation = "read" if key == "read" else "write"
                grants.append(Grant(principal, "topic", topic, "literal", operation))
        grants.extend(Grant(principal, "group", g, "literal", "read") for g in lists["groups"])
        for prefix in lists["internal_prefix"]:
            grants.extend(
                Grant(principal, "topic", prefix, "prefixed", operation)
                for operation in ("create", "read", "write", "describe")
            )
    return grants


def principals(grants: Sequence[Grant]) -> list[str]:
    """The principals the grants name, in file order."""
    return list(dict.fromkeys(grant.principal for grant in grants))


def _catalogued_topics() -> set[str]:
    return {spec.name for spec in load_catalogue()}


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise AclFileError(f"{where} must be a list of names")
    return value


def _expand(names: Sequence[str]) -> list[str]:
    expanded: list[str] = []
    for name in names:
        expanded.extend(topics.DELIVERIES if name == DELIVERIES_ALIAS else (name,))
    return expanded


# -- applying them (the admin super user only) --------------------------------------------------


def password_file(principal: str) -> str:
    """The secret file that holds `principal`'s SCRAM password: in the admin's secrets
    directory for `carebus kafka apply`, and mounted as `carebus_kafka_password` into the
    component itself (docker-compose.yml)."""
    return f"kafka_password_{principal}"


def read_passwords(directory: Path, names: Sequence[str]) -> dict[str, str]:
    """Each principal's password from `directory`; every missing or empty file is named."""
    passwords: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        path = directory / password_file(name)
        value = path.read_text().strip() if path.is_file() else ""
        if value:
            passwords[name] = value
        else:
            missing.append(path.name)
    if missing:
        raise AclFileError(f"no Kafka password in {directory} for: {', '.join(missing)}")
    return passwords


def apply_access(
    admin: AdminClient, grants: Sequence[Grant], passwords: Mapping[str, str]
) -> list[str]:
    """Every principal's SCRAM credential, then exactly these grants (both idempotent)."""
    upsert_users(admin, {name: passwords[name] for name in principals(grants)})
    return apply_grants(admin, grants)


def upsert_users(
    admin: AdminClient, passwords: Mapping[str, str], *, timeout_s: float = 30.0
) -> None:
    """Create or update each principal's SCRAM-SHA-512 credential (a new salt each time)."""
    if not passwords:
        return
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            user,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
            password.encode(),
        )
        for user, password in passwords.items()
    ]
    for future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).values():
        future.result()


def apply_grants(
    admin: AdminClient, grants: Sequence[Grant], *, timeout_s: float = 30.0
) -> list[str]:
    """Make the broker's bindings for these principals exactly `grants`; one line per principal.

    Creating a binding that exists is a no-op, so this is idempotent. The broker serves ACLs
    from its copy of the metadata, which lags the write by up to a second or so: this returns
    only once every wanted binding is visible, so a component started next is not refused.
    """
    wanted = {grant.binding() for grant in grants}
    names = principals(grants)
    present = _bindings_of(admin, names, timeout_s)
    missing = wanted - present
    extra = present - wanted
    if missing:
        for future in admin.create_acls(list(missing), request_timeout=timeout_s).values():
            future.result()
    if extra:
        filters = [_exact_filter(binding) for binding in extra]
        for future in admin.delete_acls(filters, request_timeout=timeout_s).values():
            future.result()
    deadline = time.monotonic() + timeout_s
    while True:
        present = _bindings_of(admin, names, timeout_s)
        if present == wanted:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the broker did not show the {len(wanted)} wanted ACL bindings within "
                f"{timeout_s:.0f} s ({len(wanted - present)} missing, "
                f"{len(present - wanted)} extra)"
            )
        time.sleep(0.2)
    counts = {name: sum(1 for grant in grants if grant.principal == name) for name in names}
    changed = f"{len(missing)} created, {len(extra)} deleted"
    return [f"{name}: {count} bindings" for name, count in counts.items()] + [changed]


def _bindings_of(admin: AdminClient, names: Collection[str], timeout_s: float) -> set[AclBinding]:
    found: set[AclBinding] = set()
    for name in names:
        # None matches any resource name and any host (librdkafka's filter semantics; the stub
        # types say str).
        query = AclBindingFilter(
            ResourceType.ANY,
            None,  # type: ignore[arg-type]
            ResourcePatternType.ANY,
            f"User:{name}",
            None,  # type: ignore[arg-type]
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        found.update(admin.describe_acls(query, request_timeout=timeout_s).result())
    return found


def _exact_filter(binding: AclBinding) -> AclBindingFilter:
    return AclBindingFilter(
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )
