"""Every Prometheus metric carebus exports, declared once; labels never carry personal data."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

HTTP_REQUESTS: Final = Counter(
    "carebus_http_requests_total",
    "HTTP requests answered, by service, route template and status code.",
    ["service", "route", "method", "status"],
)
HTTP_LATENCY: Final = Histogram(
    "carebus_http_request_duration_seconds",
    "Time to answer an HTTP request, by service and route template.",
    ["service", "route", "method"],
    buckets=_LATENCY_BUCKETS,
)
# No organisation label: one per organisation would grow with the directory (thousands of
# series per route); service and route template are a small, fixed set.
HTTP_RATE_LIMITED: Final = Counter(
    "carebus_http_rate_limited_total",
    "Requests refused with 429 because their organisation used up its rate, by service and "
    "route template.",
    ["service", "route"],
)

EVENTS_ACCEPTED: Final = Counter(
    "carebus_events_accepted_total",
    "Events the gateway accepted and the broker acknowledged, by type and source agency.",
    ["event_type", "source_agency"],
)
EVENTS_DUPLICATE: Final = Counter(
    "carebus_events_duplicate_total",
    "Events re-posted with an event_id already accepted with the same content (not republished).",
    ["source_agency"],
)
EVENTS_REJECTED: Final = Counter(
    "carebus_events_rejected_total",
    "Events the gateway refused, by reason (invalid, conflict, forbidden, unavailable).",
    ["reason"],
)
ADAPTER_MESSAGES: Final = Counter(
    "carebus_adapter_messages_total",
    "Messages the adapters answered, by protocol (plo, hl7v2, fhir) and outcome (accepted,"
    " refused, forbidden, unavailable).",
    ["protocol", "outcome"],
)
PRODUCE_LATENCY: Final = Histogram(
    "carebus_produce_duration_seconds",
    "Time from handing records to the producer to the broker's acknowledgement, by topic.",
    ["topic"],
    buckets=_LATENCY_BUCKETS,
)

SINK_ROWS: Final = Counter(
    "carebus_sink_rows_total",
    "Rows a store sink wrote (duplicates included, as no-ops), by sink.",
    ["sink"],
)
SINK_BATCH_SECONDS: Final = Histogram(
    "carebus_sink_batch_duration_seconds",
    "Time to write one batch and commit its offsets, by sink.",
    ["sink"],
    buckets=_LATENCY_BUCKETS,
)
DEAD_LETTERS: Final = Counter(
    "carebus_dead_letters_total",
    "Records sent to the dead-letter topic, by consumer and reason code.",
    ["consumer", "reason"],
)
CONSUMER_LAG: Final = Gauge(
    "carebus_consumer_lag_records",
    "Records between a consumer group's position and the end of a partition.",
    ["group", "topic", "partition"],
)
SINK_SKIPPED: Final = Counter(
    "carebus_sink_skipped_total",
    "Records a store sink read and deliberately did not store (another record type), by schema.",
    ["sink", "schema"],
)
SINK_RETRIES: Final = Counter(
    "carebus_sink_retries_total",
    "Batch steps a store sink retried after a transient database or broker failure, by step.",
    ["sink", "step"],
)

REGISTRY_CHANGES: Final = Counter(
    "carebus_registry_changes_total",
    "Consent and care-team changes the registry recorded (committed with their outbox record),"
    " and contact persons, by kind (consent, care_team, register, contact).",
    ["kind"],
)
AUTHORITY_REFUSALS: Final = Counter(
    "carebus_authority_refusals_total",
    "Statements about a person refused because their sender is not entitled to make them, by"
    " the rule of policy/authority.yaml that refused them.",
    ["rule"],
)
OUTBOX_PENDING: Final = Gauge(
    "carebus_registry_outbox_pending",
    "Registry outbox records committed but not yet acknowledged by the broker.",
)
OUTBOX_PUBLISHED: Final = Counter(
    "carebus_registry_outbox_published_total",
    "Registry outbox records published, by who published them (request, relay).",
    ["by"],
)

WEBHOOK_PENDING: Final = Gauge(
    "carebus_webhook_pending",
    "Webhook deliveries queued and not yet delivered or dead, by recipient agency.",
    ["agency"],
)
WEBHOOK_OLDEST_PENDING: Final = Gauge(
    "carebus_webhook_oldest_pending_seconds",
    "Age of the oldest webhook delivery still queued (0 when none), by recipient agency.",
    ["agency"],
)
WEBHOOK_DELIVERED: Final = Counter(
    "carebus_webhook_delivered_total",
    "Webhook deliveries a receiver answered with 2xx, by recipient agency.",
    ["agency"],
)
WEBHOOK_RETRIES: Final = Counter(
    "carebus_webhook_retries_total",
    "Webhook attempts that failed (5xx, 408, 429, timeout, connection) and were rescheduled.",
    ["agency"],
)
WEBHOOK_DEAD: Final = Counter(
    "carebus_webhook_dead_total",
    "Webhook deliveries given up and dead-lettered, by recipient agency and reason code.",
    ["agency", "reason"],
)
WEBHOOK_SKIPPED: Final = Counter(
    "carebus_webhook_skipped_total",
    "Deliveries for organisations without a webhook (they read GET /v1/deliveries), by agency.",
    ["agency"],
)
WEBHOOK_SEND_SECONDS: Final = Histogram(
    "carebus_webhook_send_duration_seconds",
    "Time from sending a webhook request to its answer, timeout or error, by recipient agency.",
    ["agency"],
    buckets=_LATENCY_BUCKETS,
)

ROUTING_DELAY: Final = Histogram(
    "carebus_routing_delay_seconds",
    "Time from the gateway's acceptance of an event to the router handing its deliveries and "
    "audit records to the producer: how late agencies learn of it, by event type.",
    ["event_type"],
    buckets=_LATENCY_BUCKETS,
)
ROUTING_DECISIONS: Final = Counter(
    "carebus_routing_decisions_total",
    "Routing decisions, one per candidate recipient, by event type, recipient agency, outcome "
    "(delivered, withheld, no_candidate), basis and withheld reason.",
    ["event_type", "agency", "decision", "basis", "reason"],
)

# Acknowledgement is human work: minutes to days.
_ACK_BUCKETS: Final = (
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    4 * 3600.0,
    8 * 3600.0,
    24 * 3600.0,
    48 * 3600.0,
    7 * 24 * 3600.0,
)

ALERTS: Final = Gauge(
    "carebus_alerts",
    "Alerts in the inbox, by status (open, acknowledged) and whether they are escalated; "
    "refreshed by the inbox's escalation loop.",
    ["status", "escalated"],
)
ALERT_ACK_LATENCY: Final = Histogram(
    "carebus_alert_ack_latency_seconds",
    "Time from an alert's breach to its first acknowledgement in the inbox, by rule.",
    ["rule_id"],
    buckets=_ACK_BUCKETS,
)
ALERTS_ESCALATED: Final = Counter(
    "carebus_alerts_escalated_total",
    "Alerts the inbox flagged escalated: still open past their rule's escalation time.",
)
INBOX_ACTIONS: Final = Counter(
    "carebus_inbox_actions_total",
    "Acknowledge and resolve calls on alerts, by action (ack, resolve) and result (changed, "
    "unchanged: a repeat or an alert already past that state).",
    ["action", "result"],
)
PERSON_VIEWS: Final = Counter(
    "carebus_inbox_person_views_total",
    "Person-view calls (GET /v1/persons/{subject_key}/timeline) by result: shown, or not_found"
    " (an unknown or malformed key, or a person the caller has no relation to; many in a row"
    " from one organisation look like probing).",
    ["result"],
)
INBOX_STREAMS: Final = Gauge(
    "carebus_inbox_streams",
    "Live alert streams (GET /v1/alerts/stream) open on this inbox process.",
)
INBOX_STREAM_FRAMES: Final = Counter(
    "carebus_inbox_stream_frames_total",
    "Alert changes sent to live streams, one per stream that may see the alert.",
)
INBOX_LISTEN_RECONNECTS: Final = Counter(
    "carebus_inbox_listen_reconnects_total",
    "Times the inbox re-established its LISTEN connection for alert changes after losing it.",
)

# --- SLA engine ------------------------------------------------------------------------------
SLA_ALERTS: Final = Counter(
    "carebus_sla_alerts_total",
    "Alert records the SLA engine published, by rule, kind and status (open, resolved).",
    ["rule_id", "kind", "status"],
)
SLA_OPEN_OBLIGATIONS: Final = Gauge(
    "carebus_sla_open_obligations",
    "Open obligations with a known deadline (rows of the deadline index), by rule.",
    ["rule_id"],
)
SLA_OVERDUE_OBLIGATIONS: Final = Gauge(
    "carebus_sla_overdue_obligations",
    "Open obligations past their deadline that the due scan has not breached yet, by rule.",
    ["rule_id"],
)
SLA_BREACHES: Final = Counter(
    "carebus_sla_breaches_total",
    "Obligations breached (deadline passed without fulfilment), by rule; one per obligation, "
    "however many recipients it alerts.",
    ["rule_id"],
)
SLA_ALERT_DELAY: Final = Histogram(
    "carebus_sla_alert_delay_seconds",
    "Time from an obligation's deadline to the due scan's publication of its breach alert, by "
    "rule (breaches of late or backdated triggers, raised on arrival, are not counted).",
    ["rule_id"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
)
SLA_SCAN_SECONDS: Final = Histogram(
    "carebus_sla_scan_seconds",
    "Time one due scan took, including publishing the alerts it raised.",
)
SLA_EVENTS: Final = Counter(
    "carebus_sla_events_total",
    "Records the SLA engine read, by outcome (applied, replayed, dead_lettered).",
    ["outcome"],
)
SLA_PLACE_EVENTS: Final = Counter(
    "carebus_sla_place_events_total",
    "Police callouts and housing incidents the SLA engine counted at their place, by whether "
    "the registry records the place's owner and municipality (registered, unregistered: its "
    "alerts go to the reporting housing organisations or the operator's queue).",
    ["place"],
)


# Load shedding (docs/reliability.md, "Load shedding"): labels are service, route and error type
# names only, never request data.
HTTP_UNAVAILABLE: Final = Counter(
    "carebus_http_unavailable_total",
    "Requests answered 503 because a dependency (database, broker) was unavailable, by error type",
    ["service", "error"],
)
GATEWAY_SHED: Final = Counter(
    "carebus_gateway_shed_total",
    "Ingest requests the gateway refused with 503 before reading them, by the limit reached",
    ["limit"],
)
GATEWAY_IN_FLIGHT: Final = Gauge(
    "carebus_gateway_in_flight_requests", "Ingest requests the gateway is serving now"
)
GATEWAY_BYTES_IN_FLIGHT: Final = Gauge(
    "carebus_gateway_in_flight_bytes",
    "Declared body bytes of the ingest requests the gateway is serving now",
)
SLA_PERSON_CAP: Final = Counter(
    "carebus_sla_person_cap_total",
    "Events of a person beyond the SLA engine's in-memory cap, dead-lettered or dropped from "
    'memory as documented (docs/reliability.md, "Load shedding")',
    ["outcome"],
)

# Retention (docs/retention.md): the label is the inventory's store name (a table), never data.
RETENTION_ROWS_REMOVED: Final = Counter(
    "carebus_retention_rows_removed_total",
    "Rows the retention job removed because their retention had passed, by store",
    ["store"],
)
RETENTION_ROWS_DUE: Final = Gauge(
    "carebus_retention_rows_due",
    "Rows past their retention that the last dry run found, by store",
    ["store"],
)
RETENTION_LAST_SUCCESS: Final = Gauge(
    "carebus_retention_last_success_timestamp_seconds",
    "When the retention job last finished a run over every store (Unix time)",
)
RETENTION_FAILURES: Final = Counter(
    "carebus_retention_failures_total",
    "Retention runs that stopped on an error, by store",
    ["store"],
)
