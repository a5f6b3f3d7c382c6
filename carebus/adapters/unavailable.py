"""The one error type for "a dependency did not answer in time": the HTTP services answer it
with 503 and Retry-After (carebus.adapters.http), never 500 and never a hang."""

from __future__ import annotations


class DependencyUnavailableError(Exception):
    """PostgreSQL or the broker is down, frozen or saturated; the caller may retry later.

    Its text names the dependency and the limit, never any request data."""
