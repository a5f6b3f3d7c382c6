"""The agencies carebus connects; every organisation belongs to one of them."""

from __future__ import annotations

from typing import Final

AGENCIES: Final = ("dps", "municipality", "fastlege", "nav", "police", "housing")
