"""Retention: which store keeps personal data how long, and what a run of the job removes (pure).

The inventory (infra/retention.yaml, read by `carebus.wire.retention_config`) names every store
that holds personal data. A table with a `retention` is enforced by `carebus retention run`: each
run computes one cut-off per table, `now - retention`, and the database removes the rows whose
clock started before it (migration 0015 holds, per table, what the clock is and what keeps a row
regardless). Topics are enforced by the broker. Erasure and retraction use the same inventory to
know where a person's data lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, Literal

StoreKind = Literal["table", "topic"]
DecidedBy = Literal["law", "carebus-default"]

# The order a run visits the tables. Rows that point at others go before what they point at
# (an old rotated token before the token it was replaced by; a queued webhook and the delivery
# before the disclosure that names it), the work items before the audit trail, and the registry's
# histories last, so a run that stops half-way has removed the most derived copies first.
PURGE_ORDER: Final = (
    "person_sign_ins",
    "person_sessions",
    "api_tokens",
    "outbox",
    "webhook_queue",
    "deliveries",
    "alerts",
    "sla_places",
    "accepted_events",
    "events",
    "disclosure_lookups",
    "authority_refusals",
    "operator_actions",
    "disclosures",
    # After the disclosures: a retraction goes with the last disclosure of its event.
    "retractions",
    "consents",
    "care_team_changes",
    "care_team_contacts",
    "register_changes",
)


class RetentionConfigError(ValueError):
    """A retention setting that cannot be used; the message names the field (never a value of
    personal data: the inventory holds none)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Store:
    """One store of personal data: a PostgreSQL table or a Kafka topic."""

    name: str
    kind: StoreKind
    holds: str
    # None: never removed by age (a topic compacted for good; a table of current state).
    retention: timedelta | None
    # The youngest retention the database accepts for the table (None for topics and tables
    # the job never touches).
    minimum: timedelta | None
    clock: str
    decided_by: DecidedBy
    basis: str

    @property
    def purged_by_job(self) -> bool:
        """Whether `carebus retention run` removes this store's old rows."""
        return self.kind == "table" and self.retention is not None


def check_store(store: Store) -> Store:
    """`store` if its retention can be enforced as written; RetentionConfigError otherwise."""
    where = f"stores.{store.name}"
    if store.retention is not None and store.retention <= timedelta(0):
        raise RetentionConfigError(f"{where}.retention", "must be a positive duration")
    if store.kind == "topic":
        return store
    if store.retention is None:
        if store.minimum is not None:
            raise RetentionConfigError(f"{where}.minimum", "a table never removed by age has none")
        return store
    if store.name not in PURGE_ORDER:
        raise RetentionConfigError(
            f"{where}.retention", "the retention job has no rule for this table"
        )
    if store.minimum is None:
        raise RetentionConfigError(f"{where}.minimum", "required for a table the job purges")
    if store.retention < store.minimum:
        raise RetentionConfigError(
            f"{where}.retention", f"shorter than the table's minimum {store.minimum}"
        )
    return store


@dataclass(frozen=True, slots=True)
class Inventory:
    """Every store of personal data, by name."""

    stores: tuple[Store, ...]

    def __post_init__(self) -> None:
        names = [store.name for store in self.stores]
        for name in names:
            if names.count(name) > 1:
                raise RetentionConfigError(f"stores.{name}", "named twice")
        for store in self.stores:
            check_store(store)

    def store(self, name: str) -> Store:
        for store in self.stores:
            if store.name == name:
                return store
        raise KeyError(name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(store.name for store in self.stores)

    def with_overrides(self, overrides: Mapping[str, timedelta], *, field: str) -> Inventory:
        """The inventory with the retentions of `overrides` (a deployment's settings, `field`
        naming them in errors): only tables the job purges, never below their minimum."""
        stores = {store.name: store for store in self.stores}
        for name, retention in overrides.items():
            store = stores.get(name)
            if store is None:
                raise RetentionConfigError(f"{field}.{name}", "no such store in the inventory")
            if not store.purged_by_job:
                raise RetentionConfigError(
                    f"{field}.{name}", "not a table the retention job purges"
                )
            try:
                stores[name] = check_store(replace(store, retention=retention))
            except RetentionConfigError as exc:
                raise RetentionConfigError(f"{field}.{name}", exc.problem) from None
        return Inventory(tuple(stores.values()))

    def purged(self) -> tuple[Store, ...]:
        """The tables the job purges, in PURGE_ORDER."""
        by_name = {store.name: store for store in self.stores if store.purged_by_job}
        return tuple(by_name[name] for name in PURGE_ORDER if name in by_name)


@dataclass(frozen=True, slots=True)
class Purge:
    """One table's share of a run: remove rows whose clock started before `cutoff`."""

    store: str
    cutoff: datetime


def plan(stores: Iterable[Store], now: datetime) -> tuple[Purge, ...]:
    """What a run at `now` removes: one cut-off per purged table, in PURGE_ORDER."""
    found = {store.name: store for store in stores if store.purged_by_job}
    return tuple(
        Purge(name, now - retention)
        for name in PURGE_ORDER
        if name in found and (retention := found[name].retention) is not None
    )
