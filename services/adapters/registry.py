"""The registry, as the adapters use it: an organisation's webhook set, read and deleted with
the caller's own token, so the registry's roles, URL rules and audit apply to a FHIR
Subscription exactly as to `PUT /v1/webhooks` (the adapters have no grant on the webhooks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx

from services.adapters.gateway import GRACE_S, Details

# The webhook format whose deliveries are FHIR messages (carebus.wire.outbound.Format.FHIR).
FHIR_FORMAT: Final = "fhir"


@dataclass(frozen=True, slots=True)
class Answered:
    """The registry's answer: its status and JSON body (`{"error": ...}` on a refusal)."""

    status: int
    body: Mapping[str, Any]

    @property
    def details(self) -> Details:
        """A refusal's field problems (`url`, `format`), or none."""
        error = self.body.get("error")
        items = error.get("details") if isinstance(error, Mapping) else None
        if not isinstance(items, list):
            return ()
        return tuple(
            (str(item.get("field", "")), str(item.get("problem", "")))
            for item in items
            if isinstance(item, Mapping)
        )

    @property
    def message(self) -> str:
        error = self.body.get("error")
        message = error.get("message") if isinstance(error, Mapping) else None
        return str(message) if message else f"the registry answered {self.status}"


class RegistryUnavailableError(Exception):
    """The registry did not answer (unreachable, 5xx, 429): the caller should retry."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the registry did not answer; retry later")
        self.retry_after_s = retry_after_s


class RegistryUnauthorizedError(Exception):
    """The registry refused the caller's token (revoked or expired since the adapters checked
    it)."""


class Webhooks(Protocol):
    """The caller's webhook at the registry, as a Subscription needs it."""

    async def set_webhook(self, url: str, authorization: str) -> Answered: ...

    async def webhook(self, authorization: str) -> Answered: ...

    async def delete_webhook(self, authorization: str) -> Answered: ...


class Registry:
    """An HTTP client of the registry's `/v1/webhooks`."""

    def __init__(self, base_url: str, timeout_s: float, retry_after_s: int) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url, timeout=timeout_s + GRACE_S, follow_redirects=False
        )
        self._retry_after_s = retry_after_s

    async def set_webhook(self, url: str, authorization: str) -> Answered:
        """Register `url` as the caller's webhook for FHIR messages (a new secret each time)."""
        return await self._call("PUT", {"url": url, "format": FHIR_FORMAT}, authorization)

    async def webhook(self, authorization: str) -> Answered:
        """The caller's webhook (404 when it has none)."""
        return await self._call("GET", None, authorization)

    async def delete_webhook(self, authorization: str) -> Answered:
        """Stop the caller's deliveries (204, also when there was no webhook)."""
        return await self._call("DELETE", None, authorization)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(
        self, method: str, body: Mapping[str, Any] | None, authorization: str
    ) -> Answered:
        try:
            response = await self._client.request(
                method, "/v1/webhooks", json=body, headers={"Authorization": authorization}
            )
        except httpx.HTTPError as error:
            raise RegistryUnavailableError(self._retry_after_s) from error
        if response.status_code == 401:
            raise RegistryUnauthorizedError
        if response.status_code == 429 or response.status_code >= 500:
            raise RegistryUnavailableError(_retry_after(response, self._retry_after_s))
        return Answered(response.status_code, _json(response))


def _json(response: httpx.Response) -> Mapping[str, Any]:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(response: httpx.Response, default: int) -> int:
    try:
        return max(1, int(response.headers.get("retry-after", default)))
    except ValueError:
        return default
