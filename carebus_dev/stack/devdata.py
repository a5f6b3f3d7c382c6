"""Development organisations and API tokens for the local stack (one per agency, plus roles)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import asyncpg

from carebus.runtime.config import Settings
from carebus.wire.topics import AGENCIES
from carebus_dev.stack.process import StackError

# Stable, made-up 9-digit organisation numbers; external tests and the demo scenario use them.
DEV_ORGANISATIONS: dict[str, str] = {
    "dps": "974705788",
    "municipality": "940493021",  # the demo municipality
    "fastlege": "912345675",
    "nav": "889640782",
    "police": "974760673",
    "housing": "987654325",
    "corrections": "971278374",
}
DEMO_MUNICIPALITY = DEV_ORGANISATIONS["municipality"]
# Roles besides `system` that get a token at the demo municipality (`admin`: the municipality's
# own administrator, who manages only its own tokens and webhook).
MUNICIPAL_ROLES = ("coordinator", "privacy_officer", "admin")
# Tokens of other roles at other dev organisations: the demo GP office's `coordinator` reads
# its alerts (the somatic checks it owes) and the person view in the inbox.
OTHER_ROLE_TOKENS = {"gp_coordinator": ("fastlege", "coordinator")}
# The organisation that runs carebus: a realm of its own, not an agency. Its `operator` token
# manages the directory, the registers and tokens; its privacy officer is the bus's data
# protection officer, who may see every disclosure.
OPERATOR_ORG = "918000008"
OPERATOR_TOKENS = {"operator": "operator", "operator_privacy_officer": "privacy_officer"}
DEV_NAMES: dict[str, str] = {
    "dps": "Demo DPS (specialist mental health and addiction care)",
    "municipality": "Demo municipality",
    "fastlege": "Demo GP office",
    "nav": "Demo NAV office",
    "police": "Demo police district",
    "housing": "Demo housing office",
    "corrections": "Demo prison (correctional service)",
    "operator": "carebus operator",
}
LABEL = "carebus dev token"


def dev_tokens_path(settings: Settings) -> Path:
    return settings.state_dir / "dev_tokens.json"


def read_dev_tokens(settings: Settings) -> dict[str, Any] | None:
    try:
        raw = json.loads(dev_tokens_path(settings).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _write_private(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(content)
    path.chmod(0o600)


def _wanted() -> dict[str, tuple[str, str, str]]:
    """Token name -> (agency, org_id, role)."""
    wanted = {agency: (agency, DEV_ORGANISATIONS[agency], "system") for agency in AGENCIES}
    for role in MUNICIPAL_ROLES:
        wanted[role] = ("municipality", DEMO_MUNICIPALITY, role)
    for name, (agency, role) in OTHER_ROLE_TOKENS.items():
        wanted[name] = (agency, DEV_ORGANISATIONS[agency], role)
    for name, role in OPERATOR_TOKENS.items():
        wanted[name] = ("operator", OPERATOR_ORG, role)
    return wanted


async def _ensure(settings: Settings) -> dict[str, Any]:
    from carebus.adapters import auth, directory  # imported late so the stack runs without them

    previous = read_dev_tokens(settings) or {}
    tokens: dict[str, Any] = {}
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        for agency, org_id in [*DEV_ORGANISATIONS.items(), ("operator", OPERATOR_ORG)]:
            await directory.add_organisation(
                conn, agency=agency, org_id=org_id, name=DEV_NAMES[agency]
            )
        for name, (agency, org_id, role) in _wanted().items():
            token = previous.get(name)
            if isinstance(token, str):
                principal = await auth.lookup_token(conn, token)
                if principal is not None:
                    tokens[name] = token
                    continue
            tokens[name] = await auth.create_token(
                conn, agency=agency, org_id=org_id, role=role, label=LABEL
            )
    finally:
        await conn.close()
    # `orgs` lists the agencies' organisations only (each has a system token of its name).
    tokens["orgs"] = dict(DEV_ORGANISATIONS)
    tokens["operator_org"] = OPERATOR_ORG
    return tokens


def ensure_dev_tokens(settings: Settings) -> dict[str, Any]:
    """Create the dev organisations and tokens, reusing the plaintext ones from an earlier run.

    A token in dev_tokens.json that the database no longer knows (a wiped cluster) is
    replaced by a new one. The file is 0600: it holds working credentials.
    """
    try:
        tokens = asyncio.run(_ensure(settings))
    except ImportError as exc:
        raise StackError(f"the token store is not available, so no dev tokens: {exc}") from exc
    _write_private(dev_tokens_path(settings), json.dumps(tokens, indent=2) + "\n")
    return tokens
