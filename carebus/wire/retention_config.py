"""Reading the retention inventory (infra/retention.yaml) into the domain's checked `Inventory`.

Each entry is checked against its format here (field paths in every error), then by the domain
(`carebus.domain.retention.check_store`). A topic's retention is not written in the inventory:
it is the topic catalogue's `retention.ms` (infra/kafka/topics.yaml), which the broker enforces,
so the two cannot drift; every topic of the catalogue must be in the inventory.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from carebus.domain.retention import Inventory, RetentionConfigError, Store
from carebus.runtime.config import PROJECT_ROOT, Settings
from carebus.wire.policy_files import UnreadableFileError, read_yaml

INVENTORY_PATH: Final = PROJECT_ROOT / "infra" / "retention.yaml"
TOPICS_PATH: Final = PROJECT_ROOT / "infra" / "kafka" / "topics.yaml"
OVERRIDES_FIELD: Final = "CAREBUS_RETENTION_OVERRIDES"


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["table", "topic"]
    holds: str = Field(min_length=1)
    retention: timedelta | None = None
    minimum: timedelta | None = None
    clock: str | None = None
    decided_by: Literal["law", "carebus-default"]
    basis: str = Field(min_length=1)


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    stores: dict[str, _Entry] = Field(min_length=1)


def _first_error(exc: ValidationError) -> RetentionConfigError:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "(document)"
    return RetentionConfigError(field, error["msg"])


def topic_retentions(path: Path = TOPICS_PATH) -> dict[str, timedelta | None]:
    """Each catalogued topic's retention.ms as a duration (None: -1, kept for good)."""
    # The catalogue uses merge keys (`<<: *audit`), which only PyYAML's own safe loader reads.
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RetentionConfigError(str(path), f"cannot read the topic catalogue: {exc}") from None
    topics = document.get("topics") if isinstance(document, dict) else None
    if not isinstance(topics, dict):
        raise RetentionConfigError(f"{path.name}: topics", "missing")
    found: dict[str, timedelta | None] = {}
    for name, spec in topics.items():
        config = spec.get("config", {}) if isinstance(spec, dict) else {}
        raw = config.get("retention.ms") if isinstance(config, dict) else None
        if raw is None:
            raise RetentionConfigError(f"{path.name}: topics.{name}.config.retention.ms", "missing")
        milliseconds = int(raw)
        found[str(name)] = None if milliseconds < 0 else timedelta(milliseconds=milliseconds)
    return found


def build_inventory(document: object, topics: Mapping[str, timedelta | None]) -> Inventory:
    """The checked inventory of a parsed retention file; RetentionConfigError naming the field."""
    try:
        parsed = _Document.model_validate(document)
    except ValidationError as exc:
        raise _first_error(exc) from None
    stores = []
    for name, entry in parsed.stores.items():
        where = f"stores.{name}"
        retention = entry.retention
        if entry.kind == "topic":
            if name not in topics:
                raise RetentionConfigError(where, "not a topic of infra/kafka/topics.yaml")
            if entry.retention is not None or entry.minimum is not None:
                raise RetentionConfigError(
                    f"{where}.retention", "a topic's retention is its retention.ms in topics.yaml"
                )
            retention = topics[name]
        elif entry.clock is None:
            raise RetentionConfigError(f"{where}.clock", "required for a table")
        clock = entry.clock or "the broker's retention.ms (cleanup.policy in topics.yaml)"
        stores.append(
            Store(
                name=name,
                kind=entry.kind,
                holds=entry.holds,
                retention=retention,
                minimum=entry.minimum,
                clock=clock,
                decided_by=entry.decided_by,
                basis=" ".join(entry.basis.split()),
            )
        )
    missing = sorted(set(topics) - {store.name for store in stores})
    if missing:
        raise RetentionConfigError(f"stores.{missing[0]}", "a catalogued topic is not inventoried")
    return Inventory(tuple(stores))


def load_inventory(path: Path = INVENTORY_PATH, topics_path: Path = TOPICS_PATH) -> Inventory:
    """Read and check the retention inventory; RetentionConfigError naming the field."""
    try:
        document, _ = read_yaml(path)
    except UnreadableFileError as exc:
        raise RetentionConfigError(str(path), str(exc)) from None
    return build_inventory(document, topic_retentions(topics_path))


def inventory_for(settings: Settings) -> Inventory:
    """The inventory a deployment enforces: the file, with the settings' overrides."""
    inventory = load_inventory(settings.retention_inventory)
    return inventory.with_overrides(settings.retention_overrides, field=OVERRIDES_FIELD)
