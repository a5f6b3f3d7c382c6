"""How large one person's SLA state may grow in memory, and what happens beyond it (pure).

The SLA engine loads the states of one batch's persons (at most its batch size) into memory, so
a cap per person bounds the engine's memory. Beyond a cap nothing is lost silently:

- settled obligations (closed, breached, of a removed rule) are kept only so that a replayed
  trigger changes nothing, which the engine's offset table already ensures; the oldest beyond
  `settled` are forgotten early, and the engine counts them;
- every other list (open obligations, early events, admissions, a window's events) holds what
  a future alert depends on: a record that would take one past its cap is refused, and the
  engine dead-letters it with the cap's name and leaves the person's stored state unchanged,
  so an operator can raise the cap and replay it (docs/reliability.md, "Load shedding").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from carebus.domain.obligations import RETRACTED, SlaState

# An obligation in none of these is open; a retracted one is settled (it alerts no one again).
SETTLED: Final = ("closed", "breached", "rule_removed", RETRACTED)


@dataclass(frozen=True, slots=True)
class PersonCaps:
    """Most entries of each list of one person's SLA state (a year of a very busy person's
    events is a few dozen of each; a state at every cap is a few MB of JSON)."""

    open_obligations: int = 500
    settled_obligations: int = 500
    early: int = 500
    admissions: int = 500
    window_events: int = 500


DEFAULT_CAPS: Final = PersonCaps()


class PersonCapExceededError(Exception):
    """A record would take a person's SLA state past a cap; the text names the cap only."""

    def __init__(self, cap: str) -> None:
        super().__init__(f"sla person cap exceeded: {cap}")
        self.cap = cap


def sizes(state: SlaState) -> dict[str, int]:
    """The size of each capped list of `state` (a window's events: its largest window)."""
    return {
        "open_obligations": sum(
            1 for o in state.obligations.values() if o["status"] not in SETTLED
        ),
        "early": len(state.early),
        "admissions": len(state.admissions),
        "window_events": max((_window_events(w) for w in state.windows.values()), default=0),
    }


def exceeded(
    before: Mapping[str, int], after: Mapping[str, int], caps: PersonCaps = DEFAULT_CAPS
) -> str | None:
    """The first cap a record took the state past (`before` and `after` are `sizes`), or None.

    Only growth counts: a state already past a cap (a cap lowered since) still takes the
    records that shrink it or leave that list as it was."""
    for name, size in after.items():
        if size > getattr(caps, name) and size > before.get(name, 0):
            return name
    return None


def forget_settled(state: SlaState, caps: PersonCaps = DEFAULT_CAPS) -> int:
    """Forget, in place, the oldest settled obligations beyond the cap; how many were forgotten."""
    settled = [(oid, o) for oid, o in state.obligations.items() if o["status"] in SETTLED]
    surplus = len(settled) - caps.settled_obligations
    if surplus <= 0:
        return 0
    settled.sort(key=lambda item: _settled_at(item[1]))
    for oid, _ in settled[:surplus]:
        del state.obligations[oid]
    return surplus


def _settled_at(obligation: Mapping[str, Any]) -> str:
    # RFC 3339 stamps of one writer (UTC, same form) sort as text.
    return str(obligation.get("closed_at") or obligation.get("breached_at") or "")


def _window_events(window: Mapping[str, Any]) -> int:
    events = window.get("events")
    return len(events) if isinstance(events, list) else 0
