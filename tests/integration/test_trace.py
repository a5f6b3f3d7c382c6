"""`carebus trace` against the whole bus: every hop of an admission and of its late fulfilment.

Gateway, registry, router, event store, audit store, webhooks, SLA engine (deadlines in
seconds, as in test_sla.py), alert store and inbox run as processes; a real HTTP receiver
takes the home municipality's webhook deliveries.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from carebus.adapters.auth import create_token
from carebus.adapters.webhook_registrations import delete_webhook, set_webhook
from carebus.domain.identity import random_nin
from carebus.ops.trace import EventTrace, render, trace
from carebus.wire.policy_files import load_rules
from carebus_dev.stack.devdata import DEV_ORGANISATIONS, OPERATOR_ORG
from carebus_dev.testing import ServiceClients, ServiceProcess, TestStack
from producers import scenario

pytestmark = pytest.mark.integration

DPS = DEV_ORGANISATIONS["dps"]
NAV = DEV_ORGANISATIONS["nav"]
# The person's home municipality: its own organisation, so its webhook and alerts are the
# only ones in the session.
HOME = "964338549"
DEADLINE_S = 3
WAIT_S = 60.0
OVERRIDE = f"""
version: "test"
rules:
  - {{id: health_info.after_admission, deadline: PT{DEADLINE_S}S}}
"""
SERVICES = (
    "gateway",
    "registry",
    "inbox",
    "event_store",
    "audit_store",
    "alert_store",
    "webhooks",
    "router",
    "sla",
)
CAREBUS = Path(sys.executable).with_name("carebus")

T = TypeVar("T")


class Receiver(BaseHTTPRequestHandler):
    """Answers every webhook delivery 200."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def receiver_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="trace-receiver", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def rules_override(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "sla-seconds.yaml"
    path.write_text(OVERRIDE, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def services(stack: TestStack, rules_override: Path) -> Iterator[None]:
    env = {"CAREBUS_SLA_RULES_OVERRIDE": str(rules_override)}
    started: list[ServiceProcess] = [stack.start_service(name, env=env) for name in SERVICES]
    yield
    for service in reversed(started):
        service.stop()


class Bus(ServiceClients):
    """The running services' clients; events come from the DPS."""

    async def publish(self, event_type: str, nin: str, payload: dict[str, Any]) -> str:
        source = {"agency": "dps", "org_id": DPS, "system": "DIPS"}
        return await self.post_event(source, event_type, nin, payload, token="dps")


async def eventually(probe: Callable[[], Awaitable[T]], timeout_s: float = WAIT_S) -> T:
    """The probe's first truthy answer; fails with the last answer after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s; last answer {found!r}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def bus(stack: TestStack, services: None, receiver_url: str) -> AsyncIterator[Bus]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    tokens = {
        agency: await create_token(conn, agency=agency, org_id=org, role="system")
        for agency, org in DEV_ORGANISATIONS.items()
    }
    tokens |= {
        "home": await create_token(conn, agency="municipality", org_id=HOME, role="system"),
        "coordinator": await create_token(
            conn, agency="municipality", org_id=HOME, role="coordinator"
        ),
        "operator": await create_token(
            conn, agency="operator", org_id=OPERATOR_ORG, role="operator"
        ),
    }
    await set_webhook(conn, HOME, receiver_url)
    bus = Bus(stack, tokens=tokens, conn=conn)
    # Freshly started workers join their groups and catch up with what earlier modules left
    # on the stream: wait until the router, the event store and the SLA engine have one event.
    warmup = await bus.publish(
        "discharge_ready_withdrawn", random_nin(bus.rng), {"discharge_ready_event_id": "dps-none"}
    )
    await eventually(
        lambda: conn.fetchval(
            "SELECT (SELECT count(*) FROM disclosures WHERE event_id = $1) "
            "* (SELECT count(*) FROM events WHERE event_id = $1) "
            "* (SELECT count(*) FROM sla_persons WHERE state::text LIKE '%' || $1 || '%')",
            warmup,
        ),
        timeout_s=180,
    )
    yield bus
    await delete_webhook(conn, HOME)
    await bus.close()
    await conn.close()


def admission() -> dict[str, Any]:
    return {
        "reason": "psychosis",
        "admission_kind": "voluntary",
        "housing_status": "stable",
        "needs_municipal_services": True,
        "home_municipality_org": HOME,
        "ward": "Akuttpost 2",
    }


async def traced(bus: Bus, stack: TestStack, event_id: str) -> EventTrace:
    rules = load_rules(stack.settings.sla_rules)
    [found] = await trace(bus.conn, event_id, rules)
    return found


def run_cli(stack: TestStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CAREBUS), "trace", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_trace_shows_every_hop_of_an_admission_and_its_late_fulfilment(
    bus: Bus, stack: TestStack
) -> None:
    """Received, stored, routed (delivered and withheld), delivered, handed to the webhook,
    obligation opened, alerted, acknowledged and resolved by the late fulfilment."""
    nin = random_nin(bus.rng)
    # The operator's population register makes HOME the home municipality: its relation.
    home = {"nin": nin, "home_municipality_org": HOME}
    registered = await bus.registry.post(
        "/v1/population-register", json=home, headers=bus.auth("operator")
    )
    assert registered.status_code == 201, registered.text
    member = {"nin": nin, "agency": "nav", "org_id": NAV, "role": "participant", "status": "member"}
    response = await bus.registry.post("/v1/care-teams", json=member, headers=bus.auth("home"))
    assert response.status_code == 201, response.text
    admitted = await bus.publish("admission", nin, admission())

    async def home_alert() -> str | None:
        found: str | None = await bus.conn.fetchval(
            "SELECT alert_id FROM alerts WHERE $1 = ANY(event_ids) AND recipient_org = $2",
            admitted,
            HOME,
        )
        return found

    alert_id = await eventually(home_alert)
    response = await bus.inbox.post(f"/v1/alerts/{alert_id}/ack", headers=bus.auth("coordinator"))
    assert response.status_code == 200, response.text
    sent = await bus.publish("health_info_sent", nin, {"admission_event_id": admitted})

    async def settled() -> bool:
        trace = await traced(bus, stack, admitted)
        return (
            len(trace.alerts) == 2
            and all(a.status == "resolved" for a in trace.alerts)
            and bool(trace.deliveries)
            and trace.deliveries[0].webhook is not None
            and trace.deliveries[0].webhook.status == "delivered"
        )

    await eventually(settled)
    found = await traced(bus, stack, admitted)

    assert found.source_org == DPS
    assert found.accepted is not None
    assert found.accepted.event_type == "admission"
    assert found.stored is not None
    assert found.stored.source_system == "DIPS"
    assert found.subject_key == found.accepted.subject_key == found.stored.subject_key
    decisions = {d.recipient_org: d for d in found.decisions}
    assert set(decisions) == {HOME, NAV}
    assert (decisions[HOME].decision, decisions[HOME].basis, decisions[HOME].rule_id) == (
        "delivered",
        "statutory",
        "admission.home_municipality",
    )
    assert "reason" not in decisions[HOME].fields
    assert (decisions[NAV].decision, decisions[NAV].reason) == ("withheld", "no_consent")
    [delivery] = found.deliveries
    assert (delivery.recipient_org, delivery.delivery_id) == (HOME, decisions[HOME].delivery_id)
    assert delivery.webhook is not None
    assert (delivery.webhook.status, delivery.webhook.last_status) == ("delivered", 200)
    assert found.sla.applied is True
    [opened] = found.sla.effects
    assert (opened.effect, opened.rule_id, opened.status) == (
        "opened",
        "health_info.after_admission",
        "closed",
    )
    assert opened.breached_at is not None
    by_recipient = {a.recipient_org: a for a in found.alerts}
    assert set(by_recipient) == {DPS, HOME}
    assert all(a.role == "raised" and a.resolution == "fulfilled_late" for a in found.alerts)
    assert by_recipient[HOME].acknowledged_at is not None
    assert by_recipient[HOME].alert_id == alert_id

    text = render(found)
    stages = [line[26:].split(" ", 1)[0] for line in text.splitlines()[1:]]
    for stage in (
        "received",
        "stored",
        "routed",
        "delivered",
        "webhook",
        "sla",
        "alerted",
        "acknowledged",
        "resolved",
    ):
        assert stage in stages, text
    assert nin not in text

    # The engine resolved the alerts on it; the event store's sink, a consumer of its own, may
    # store the fulfilment a little later, and the trace reads its effects from the stored event.
    async def fulfilment_traced() -> EventTrace | None:
        trace = await traced(bus, stack, sent)
        return trace if trace.stored is not None and trace.sla.effects else None

    fulfilment = await eventually(fulfilment_traced)
    assert fulfilment is not None
    [fulfils] = fulfilment.sla.effects
    assert (fulfils.effect, fulfils.trigger_event_id, fulfils.obligation_id) == (
        "fulfils",
        admitted,
        opened.obligation_id,
    )
    assert [a.role for a in fulfilment.alerts] == ["resolved", "resolved"]

    # The command as an operator runs it: the text timeline, and the JSON document.
    shown = await asyncio.to_thread(run_cli, stack, admitted)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == render(await traced(bus, stack, admitted))
    as_json = await asyncio.to_thread(run_cli, stack, sent, "--source-org", DPS, "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    [source] = document["sources"]
    assert source["stored"]["event_type"] == "health_info_sent"
    assert source["sla"]["effects"][0]["effect"] == "fulfils"
    assert nin not in as_json.stdout


async def test_an_event_nobody_stored_exits_1(bus: Bus, stack: TestStack) -> None:
    """An unknown event id (or a known one from another source) exits 1 saying so."""
    unknown = await asyncio.to_thread(run_cli, stack, f"dps-{uuid.uuid4().hex}")
    assert unknown.returncode == 1
    assert "in the event store" in unknown.stderr
    admitted = await bus.publish("admission", random_nin(bus.rng), admission())
    await eventually(
        lambda: bus.conn.fetchval("SELECT 1 FROM events WHERE event_id = $1", admitted)
    )
    other_source = await asyncio.to_thread(run_cli, stack, admitted, "--source-org", NAV)
    assert other_source.returncode == 1
    assert f"no event {admitted} from {NAV} in the event store" in other_source.stderr


async def test_a_demo_scenario_admission_shows_every_hop(bus: Bus, stack: TestStack) -> None:
    """The demo scenario's first admission: received, stored, routed to the home municipality,
    delivered (read over HTTP: no webhook), obligations opened and alerts resolved."""
    run = uuid.uuid4().hex[:8]
    demo = scenario.Stack(
        gateway=stack.settings.service_url(stack.settings.gateway_port),
        registry=stack.settings.service_url(stack.settings.registry_port),
        postgres=stack.settings.postgres_dsn,
        # The agencies' tokens, and the operator's: the demo records the persons' housing site.
        tokens={name: bus.tokens[name] for name in (*DEV_ORGANISATIONS, "operator")},
        orgs=DEV_ORGANISATIONS,
    )
    posted = await scenario.play(demo, run, seed=2026)
    admitted = f"dps-{DPS}-{run}-a-001"
    assert admitted in posted

    async def settled() -> bool:
        found = await traced(bus, stack, admitted)
        return (
            found.sla.applied is True
            and bool(found.deliveries)
            and len(found.alerts) == 2
            and all(alert.status == "resolved" for alert in found.alerts)
        )

    await eventually(settled)
    shown = await asyncio.to_thread(run_cli, stack, admitted)
    assert shown.returncode == 0, shown.stderr
    print(shown.stdout)  # the sample in the test log (`pytest -s`)
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"event {admitted} from {DPS}: admission, subject_key ")
    hops = [(line[26:].split(" ", 1)[0], line) for line in lines[1:]]
    stages = {stage for stage, _ in hops}
    assert {"received", "stored", "routed", "delivered", "webhook", "sla", "alerted"} <= stages
    home = DEV_ORGANISATIONS["municipality"]
    [routed] = [line for stage, line in hops if stage == "routed"]
    assert f"municipality {home}: delivered on statutory basis" in routed
    [webhook] = [line for stage, line in hops if stage == "webhook"]
    assert webhook.endswith("no webhook; available via GET /v1/deliveries")
    opened = [line for stage, line in hops if stage == "sla"]
    assert any("opened obligation health_info.after_admission:" in line for line in opened)
    assert any("opened obligation housing_work.homeless_admission:" in line for line in opened)
