"""Request bodies over their route's limit are refused with 413 before they are read (issue 14,
item 5): by their Content-Length, or, without one, at the first chunk past the limit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from carebus.adapters.http import BodyLimits, LimitRequestBody, create_app
from carebus.runtime.config import Settings

LIMIT = 100
BATCH_LIMIT = 1000


class Note(BaseModel):
    text: str


def service() -> tuple[FastAPI, list[int]]:
    """An app whose routes say how many bytes they read, with small limits."""
    settings = Settings(http_max_body_bytes=LIMIT, http_max_batch_body_bytes=BATCH_LIMIT)
    app = create_app("limit-test", title="limit test", settings=settings)
    read: list[int] = []

    @app.post("/v1/events")
    async def event(request: Request) -> JSONResponse:
        read.append(len(await request.body()))
        return JSONResponse({"read": read[-1]})

    @app.post("/v1/events:batch")
    async def batch(request: Request) -> JSONResponse:
        read.append(len(await request.body()))
        return JSONResponse({"read": read[-1]})

    @app.post("/v1/notes")
    async def note(body: Note) -> JSONResponse:  # a body FastAPI reads itself
        read.append(len(body.text))
        return JSONResponse({"read": read[-1]})

    return app, read


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def error_of(response: httpx.Response) -> tuple[int, str, list[dict[str, str]]]:
    body: dict[str, Any] = response.json()
    return response.status_code, body["error"]["code"], body["error"]["details"]


async def test_a_body_within_its_routes_limit_is_read_whole() -> None:
    """The limit is inclusive; the batch route takes its own, larger limit."""
    app, read = service()
    async with client(app) as http:
        single = await http.post("/v1/events", content=b"x" * LIMIT)
        batch = await http.post("/v1/events:batch", content=b"x" * BATCH_LIMIT)
        note = await http.post("/v1/notes", json={"text": "y" * 50})
    assert (single.status_code, batch.status_code, note.status_code) == (200, 200, 200)
    assert read == [LIMIT, BATCH_LIMIT, 50]


@pytest.mark.parametrize(("path", "limit"), [("/v1/events", LIMIT), ("/v1/notes", LIMIT)])
async def test_a_declared_length_over_the_limit_is_refused_unread(path: str, limit: int) -> None:
    """413 in the error shape, naming the limit, and the route never runs."""
    app, read = service()
    async with client(app) as http:
        response = await http.post(path, content=b"x" * (limit + 1))
    assert error_of(response) == (
        413,
        "too_large",
        [{"field": "body", "problem": "at most 100 bytes"}],
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert read == []


async def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read() -> None:
    """The app is not even called: nothing asks for the body."""
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the body was read")

    async def send(message: Message) -> None:
        sent.append(message)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app was called")

    scope: Scope = {
        "type": "http",
        "path": "/v1/events",
        "method": "POST",
        "headers": [(b"content-length", str(LIMIT + 1).encode())],
    }
    await LimitRequestBody(app, BodyLimits(default=LIMIT))(scope, receive, send)
    assert sent[0]["status"] == 413


async def test_the_batch_route_is_refused_over_its_own_limit() -> None:
    app, read = service()
    async with client(app) as http:
        response = await http.post("/v1/events:batch", content=b"x" * (BATCH_LIMIT + 1))
    assert error_of(response)[:2] == (413, "too_large")
    assert read == []


@pytest.mark.parametrize("path", ["/v1/events", "/v1/notes"])
async def test_a_chunked_body_is_refused_once_it_crosses_the_limit(path: str) -> None:
    """Without a Content-Length the bytes are counted as they arrive: 413 in the same shape,
    whether the route or FastAPI reads the body."""
    app, read = service()
    async with client(app) as http:
        response = await http.post(path, content=chunks(b'{"text": "', b"z" * LIMIT, b'"}'))
    assert "content-length" not in response.request.headers
    assert error_of(response) == (
        413,
        "too_large",
        [{"field": "body", "problem": "at most 100 bytes"}],
    )
    assert read == []


async def test_reading_stops_at_the_first_chunk_past_the_limit() -> None:
    """The limited body is never asked for more than the chunk that crossed the limit."""
    limits = BodyLimits(default=10)
    asked: list[int] = []
    pending = [b"a" * 6, b"b" * 6, b"c" * 6, b""]

    async def receive() -> Message:
        asked.append(1)
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def reads_everything(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        raise AssertionError("the whole body was read")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "path": "/v1/events", "headers": [], "method": "POST"}
    await LimitRequestBody(reads_everything, limits)(scope, receive, send)
    assert len(asked) == 2
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "too_large"


async def test_a_content_length_that_is_not_a_number_is_400() -> None:
    app, read = service()
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the body was read")

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "path": "/v1/events",
        "method": "POST",
        "headers": [(b"content-length", b"12abc")],
    }
    await LimitRequestBody(app, BodyLimits(default=LIMIT))(scope, receive, send)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["details"] == [
        {"field": "Content-Length", "problem": "must be a number of bytes"}
    ]
    assert read == []


def test_the_policy_is_the_settings_default_but_for_the_batch_route() -> None:
    limits = BodyLimits.of(Settings(http_max_body_bytes=7, http_max_batch_body_bytes=9))
    assert limits.of_path("/v1/consents") == 7
    assert limits.of_path("/v1/events") == 7
    assert limits.of_path("/v1/events:batch") == 9
