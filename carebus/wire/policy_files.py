"""Reading the reviewed policy files (policy/*.yaml) into the domain's checked policies.

The files are YAML read with a loader that refuses a key given twice in one mapping (PyYAML keeps
the last silently; a reviewed file must not hide one). The routing policy and the SLA rules are
checked against their formats (`carebus.wire.policy_models`) and then by the domain
(`domain.policy.build_policy`, `domain.sla.build_rules`); the authority policy by the domain
(`domain.authority.build_authority`). A policy's version ends with a hash of the bytes read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Final

import yaml

from carebus.domain.authority import AuthorityPolicy, AuthorityPolicyError, build_authority
from carebus.domain.policy import Policy, PolicyError
from carebus.domain.sla import RuleSet, SlaRulesError
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.policy_models import routing_policy, sla_rules

AUTHORITY_PATH: Final = PROJECT_ROOT / "policy" / "authority.yaml"


class UnreadableFileError(Exception):
    """A policy file that cannot be read or is not YAML; the message says which and why."""


class _UniqueKeyLoader(yaml.CSafeLoader):
    """PyYAML keeps the last of two equal keys silently; a reviewed file must not hide one."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> Any:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            repeated = key in seen
        except TypeError:
            continue  # an unhashable key: construct_mapping below refuses it with its position
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def read_yaml(path: Path | str) -> tuple[object, bytes]:
    """The document of a YAML file and the bytes it was read from; UnreadableFileError."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableFileError(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        return yaml.load(raw, Loader=_UniqueKeyLoader), raw  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise UnreadableFileError(f"not valid YAML: {exc}") from None


def load_policy(path: Path | str) -> Policy:
    """Read and check the routing policy; PolicyError naming every rule and problem found."""
    try:
        document, raw = read_yaml(path)
    except UnreadableFileError as exc:
        raise PolicyError(path, [str(exc)]) from None
    return routing_policy(document, digest=_digest(raw), path=str(path))


def load_rules(path: Path | str, override: Path | str | None = None) -> RuleSet:
    """The checked SLA rules of `path`, with `override`'s rules replacing same-id rules key by
    key (see `policy_models.sla_rules`); SlaRulesError names every problem found."""
    files = [path] if override is None else [path, override]
    documents: list[tuple[str, object]] = []
    digest = ""
    for file in files:
        try:
            document, raw = read_yaml(file)
        except UnreadableFileError as exc:
            raise SlaRulesError(file, [str(exc)]) from None
        documents.append((str(file), document))
        # One file: its hash; with an override, the hash of both hashes.
        digest = _digest(raw) if not digest else _digest((digest + _digest(raw)).encode())
    return sla_rules(documents, digest=digest)


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:12]


def load_authority(path: Path | str = AUTHORITY_PATH) -> AuthorityPolicy:
    """Read and check `policy/authority.yaml`; AuthorityPolicyError says what is wrong."""
    try:
        document, _ = read_yaml(path)
    except UnreadableFileError as exc:
        raise AuthorityPolicyError(f"cannot read {path}: {exc}") from None
    return build_authority(document, path)
