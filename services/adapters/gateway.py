"""The gateway, as the adapters use it: a mapped message's events posted as one batch with the
caller's own token, so the gateway's authority, validation, idempotency and sealing apply to
them exactly as to carebus JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx

# A batch the gateway refused: what it said, field by field (`events[0].payload.reason`).
Details = tuple[tuple[str, str], ...]
# The gateway answers within its own request time-out (503 past it); a little more here.
GRACE_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Published:
    """The gateway has every event (202): their ids and subject keys, in order."""

    accepted: tuple[Mapping[str, str], ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """The gateway refused the batch (4xx): nothing of it was accepted."""

    status: int
    message: str
    details: Details


class GatewayUnavailableError(Exception):
    """The gateway did not take the batch (unreachable, 503, 429): the sender should retry."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the gateway did not take the events; retry later")
        self.retry_after_s = retry_after_s


class GatewayUnauthorizedError(Exception):
    """The gateway refused the caller's token (revoked or expired since the adapters checked
    it): a question of the credential, not of the message, so no protocol answer decides it."""


class Gateway:
    """An HTTP client of the gateway's `POST /v1/events:batch`."""

    def __init__(self, base_url: str, timeout_s: float, retry_after_s: int) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url, timeout=timeout_s + GRACE_S, follow_redirects=False
        )
        self._base_url = base_url
        self._retry_after_s = retry_after_s

    async def publish(
        self, events: Sequence[Mapping[str, Any]], authorization: str
    ) -> Published | Refused:
        """Post `events` as one all-or-nothing batch under the caller's `authorization`."""
        try:
            response = await self._client.post(
                "/v1/events:batch",
                json={"events": list(events)},
                headers={"Authorization": authorization},
            )
        except httpx.HTTPError as error:
            raise GatewayUnavailableError(self._retry_after_s) from error
        if response.status_code == 202:
            return Published(tuple(response.json()["accepted"]))
        if response.status_code == 401:
            raise GatewayUnauthorizedError
        if response.status_code in (429, 502, 503, 504) or response.status_code >= 500:
            raise GatewayUnavailableError(_retry_after(response, self._retry_after_s))
        return _refused(response)

    async def close(self) -> None:
        await self._client.aclose()


def _retry_after(response: httpx.Response, default: int) -> int:
    try:
        return max(1, int(response.headers.get("retry-after", default)))
    except ValueError:
        return default


def _refused(response: httpx.Response) -> Refused:
    try:
        error = response.json()["error"]
        details = tuple(
            (str(item["field"]), str(item["problem"])) for item in error.get("details", [])
        )
        return Refused(response.status_code, str(error["message"]), details)
    except (ValueError, KeyError, TypeError):
        return Refused(response.status_code, f"the gateway answered {response.status_code}", ())
