"""Window rules' counting: N events within a period, one alert per episode (pure).

A person's window (carebus.domain.obligations) and a place's (carebus.domain.places) count the
same way; only what they keep per event and whom they alert differ. An entry is a list of
strings that starts `[occurred_at, event_id, sender, ...]`; the caller may keep more after
those three (entries kept before senders were recorded have two elements and no sender).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from carebus.domain.sla import Duration, parse_rfc3339

__all__ = ["add", "ends_holding", "entry_of", "episode", "inside", "span_before"]


def entry_of(entry: Sequence[str]) -> tuple[str, str | None]:
    """An entry's (event_id, sender)."""
    return entry[1], entry[2] if len(entry) > 2 else None


def span_before(window: Duration, moment: datetime) -> datetime:
    """`moment` minus `window` (the calendar part approximated by 30-day months)."""
    span = timedelta(days=window.months * 30 + window.days, seconds=window.seconds)
    return moment - span


def add(entries: list[list[str]], entry: list[str], window: Duration) -> list[list[str]] | None:
    """`entries` with `entry` added, oldest first, and those too old to count again with any
    later event dropped; None when it is there already (a replay). Events may arrive out of
    order: an entry is kept for two windows before the latest one."""
    if any(entry_of(kept) == entry_of(entry) for kept in entries):
        return None
    added = sorted([*entries, entry], key=lambda kept: parse_rfc3339(kept[0]))
    latest = max(parse_rfc3339(kept[0]) for kept in added)
    oldest = span_before(window, span_before(window, latest))
    return [kept for kept in added if parse_rfc3339(kept[0]) > oldest]


def inside(entries: Sequence[list[str]], window: Duration, moment: datetime) -> list[list[str]]:
    """The entries within `window` ending at `moment` (inclusive)."""
    start = span_before(window, moment)
    return [kept for kept in entries if start < parse_rfc3339(kept[0]) <= moment]


def ends_holding(
    entries: Sequence[list[str]], entry: list[str], window: Duration
) -> list[datetime]:
    """The moments, earliest first, at which a window ending at one of `entries` holds
    `entry`: its own time and those of the later entries within `window` after it. Where
    events arrive out of order (a place's come from many persons' streams), a late-arriving
    event may complete a window that ends at an event already counted."""
    own = parse_rfc3339(entry[0])
    ends = {own}
    for kept in entries:
        moment = parse_rfc3339(kept[0])
        if moment > own and span_before(window, moment) < own:
            ends.add(moment)
    return sorted(ends)


def episode(
    counted: Sequence[list[str]],
    count: int,
    window: Duration,
    moment: datetime,
    episode_at: str | None,
) -> bool:
    """Whether `counted` (the entries that count, inside the window ending at `moment`) opens
    an episode: at least `count` of them, and no episode began within `window` before
    `moment`. One alert per episode; the caller records `moment` as the episode's start."""
    if len(counted) < count:
        return False
    return episode_at is None or moment >= window.after(parse_rfc3339(episode_at))
