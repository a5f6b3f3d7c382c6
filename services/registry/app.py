"""The registry: the system of record for organisations and API tokens (consents and care teams
follow in the routing issue)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import asyncpg
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from carebus.auth import Principal, TokenCache, create_token
from carebus.config import Settings, get_settings
from carebus.http import ApiError, create_app, principal_dependency
from carebus.telemetry import get_logger

log = get_logger(__name__)

Agency = Literal["dps", "municipality", "fastlege", "nav", "police", "housing"]
Role = Literal["system", "coordinator", "privacy_officer", "admin"]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agency: Agency
    org_id: str = Field(pattern=r"^[0-9]{9}$", description="9-digit organisation number")
    role: Role
    label: str = Field(default="", max_length=200)


class TokenCreated(BaseModel):
    token: str
    agency: Agency
    org_id: str
    role: Role


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=5)
        app.state.pool = pool
        app.state.tokens = TokenCache(pool)
        try:
            yield
        finally:
            await pool.close()

    app = create_app("registry", title="carebus registry", lifespan=lifespan)
    admin_only = principal_dependency("admin")

    @app.post("/v1/tokens", status_code=201, response_model=TokenCreated)
    async def post_token(
        body: TokenRequest, request: Request, principal: Principal = Depends(admin_only)
    ) -> TokenCreated:
        """Issue a token for an organisation and role; the token is shown once, stored hashed."""
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn:
            try:
                token = await create_token(
                    conn, agency=body.agency, org_id=body.org_id, role=body.role, label=body.label
                )
            except ValueError as error:
                raise ApiError(422, str(error), [("org_id", str(error))]) from error
        log.info("token_issued", org_id=body.org_id, role=body.role, by_org=principal.org_id)
        return TokenCreated(token=token, agency=body.agency, org_id=body.org_id, role=body.role)

    return app
