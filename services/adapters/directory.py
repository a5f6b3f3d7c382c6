"""The organisation directory as the mappings read it: a snapshot of the whole table, reloaded
every few seconds (it is small, and changes by the operator's hand)."""

from __future__ import annotations

import time
from typing import Final

import asyncpg

from carebus.adapters.directory import list_organisations
from carebus.wire.translation import Party, StaticDirectory

# A newly registered organisation is found this soon.
REFRESH_S: Final = 10.0


class DirectorySnapshot:
    def __init__(self, pool: asyncpg.Pool, refresh_s: float = REFRESH_S) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self._view = StaticDirectory()
        self._loaded_at = float("-inf")

    async def view(self) -> StaticDirectory:
        """The directory as of at most `refresh_s` ago."""
        if time.monotonic() - self._loaded_at >= self._refresh_s:
            organisations = await list_organisations(self._pool)
            self._view = StaticDirectory(
                tuple(
                    Party(o.org_id, o.agency, o.her_id, o.municipality_number)
                    for o in organisations
                )
            )
            self._loaded_at = time.monotonic()
        return self._view
