"""The agencies carebus connects; every organisation belongs to one of them."""

from __future__ import annotations

from typing import Final

# `corrections`: the correctional service (kriminalomsorgen), not health personnel; it sends a
# prison release and receives nothing (no routing rule names it).
AGENCIES: Final = ("dps", "municipality", "fastlege", "nav", "police", "housing", "corrections")
