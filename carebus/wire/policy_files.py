"""Reading the reviewed policy files (policy/*.yaml) into the domain's checked policies.

The files are YAML read with a loader that refuses a key given twice in one mapping (PyYAML keeps
the last silently; a reviewed file must not hide one). What each file means, and every check of
it, is the domain's (`domain.policy.build_policy`, `domain.sla.build_rules`,
`domain.authority.build_authority`); this module only turns a path into a document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from carebus.domain.authority import AuthorityPolicy, AuthorityPolicyError, build_authority
from carebus.domain.policy import Policy, PolicyError, build_policy
from carebus.domain.sla import RuleFile, RuleSet, SlaRulesError, build_rules
from carebus.runtime.config import PROJECT_ROOT

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
    return build_policy(document, raw, path)


def load_rules(path: Path | str, override: Path | str | None = None) -> RuleSet:
    """The checked SLA rules of `path`, with `override`'s rules replacing same-id rules key by
    key (see `domain.sla.build_rules`); SlaRulesError names every problem found."""
    return build_rules(_rule_file(path), None if override is None else _rule_file(override))


def _rule_file(path: Path | str) -> RuleFile:
    try:
        document, raw = read_yaml(path)
    except UnreadableFileError as exc:
        raise SlaRulesError(path, [str(exc)]) from None
    return RuleFile(str(path), document, raw)


def load_authority(path: Path | str = AUTHORITY_PATH) -> AuthorityPolicy:
    """Read and check `policy/authority.yaml`; AuthorityPolicyError says what is wrong."""
    try:
        document, _ = read_yaml(path)
    except UnreadableFileError as exc:
        raise AuthorityPolicyError(f"cannot read {path}: {exc}") from None
    return build_authority(document, path)
