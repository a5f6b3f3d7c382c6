"""The TLS proxy in front of the public APIs and the adapters' MLLP listener: infra/proxy/nginx.conf
and its server template."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from starlette.routing import Route

from carebus.adapters.http import BodyLimits
from carebus.runtime.config import Settings
from carebus_dev.stack.kafka_pki import LocalPki
from services.adapters.app import build_app as build_adapters_app
from services.inbox.app import KEEPALIVE_S

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROXY_DIR = PROJECT_ROOT / "infra" / "proxy"
MAIN_FILE = PROXY_DIR / "nginx.conf"
TEMPLATE_FILE = PROXY_DIR / "templates" / "carebus.conf.template"
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"

# Each public service, the host variable it is served under, and where the proxy finds it.
UPSTREAMS = {
    "gateway": "http://gateway:18080",
    "registry": "http://registry:18081",
    "audit": "http://audit:18082",
    "inbox": "http://inbox:18083",
    "adapters": "http://adapters:18085",
    "grafana": "http://grafana:3000",
}
# The carebus APIs among them (Grafana is not carebus's).
API_SERVICES = ("gateway", "registry", "audit", "inbox", "adapters")
# Where people sign in: unauthenticated, and each /login stores a sign-in row.
SIGN_IN_PATHS = {
    "inbox": ["/login", "/callback"],
    "audit": ["/login", "/callback", "/patient/login", "/patient/callback"],
}
STREAM_PATH = "/v1/alerts/stream"  # the inbox's live alert stream (services/inbox/app.py)
BATCH_PATH = "/v1/events:batch"  # the gateway's one route with a larger body limit
MLLP_PORT = "2575"  # HL7's registered port: MLLP over TLS to the adapters


class Directive(NamedTuple):
    name: str
    args: list[str]
    block: list[Directive] | None


def parse(text: str) -> list[Directive]:
    """nginx's configuration syntax: directives ending in `;` or holding a `{ }` block."""
    text = re.sub(r"(?m)^\s*#.*$|\s#.*$", "", text)
    tokens = re.findall(r"\$\{\w+\}|\"[^\"]*\"|'[^']*'|[{};]|[^\s{};]+", text)
    directives, rest = _parse_block(tokens)
    assert not rest, f"unbalanced braces near {rest[:5]}"
    return directives


def _parse_block(tokens: list[str]) -> tuple[list[Directive], list[str]]:
    directives: list[Directive] = []
    words: list[str] = []
    while tokens:
        token, tokens = tokens[0], tokens[1:]
        if token == ";":
            directives.append(Directive(words[0], words[1:], None))
            words = []
        elif token == "{":
            block, tokens = _parse_block(tokens)
            directives.append(Directive(words[0], words[1:], block))
            words = []
        elif token == "}":
            return directives, tokens
        else:
            words.append(token[1:-1] if token[0] in "\"'" else token)
    return directives, tokens


def find(block: list[Directive] | None, name: str) -> list[Directive]:
    return [directive for directive in block or [] if directive.name == name]


def one(block: list[Directive] | None, name: str) -> list[str]:
    """The arguments of the one directive `name` in the block."""
    [directive] = find(block, name)
    return directive.args


@pytest.fixture(scope="module")
def http() -> list[Directive]:
    [directive] = find(parse(MAIN_FILE.read_text(encoding="utf-8")), "http")
    assert directive.block is not None
    return directive.block


@pytest.fixture(scope="module")
def stream() -> list[Directive]:
    [directive] = find(parse(MAIN_FILE.read_text(encoding="utf-8")), "stream")
    assert directive.block is not None
    return directive.block


@pytest.fixture(scope="module")
def servers() -> list[Directive]:
    return find(parse(TEMPLATE_FILE.read_text(encoding="utf-8")), "server")


@pytest.fixture(scope="module")
def compose_services() -> dict[str, dict[str, Any]]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


@pytest.fixture(scope="module")
def proxy_environment(compose_services: dict[str, dict[str, Any]]) -> dict[str, str]:
    environment: dict[str, str] = compose_services["proxy"]["environment"]
    return environment


def _tls_server(servers: list[Directive], service: str) -> Directive:
    variable = f"${{CAREBUS_{service.upper()}_HOST}}"
    [server] = [
        server
        for server in servers
        if find(server.block, "server_name") and one(server.block, "server_name") == [variable]
    ]
    return server


def _location(server: Directive, *match: str) -> Directive:
    [location] = [found for found in find(server.block, "location") if found.args == list(match)]
    return location


def _matching_location(server: Directive, path: str) -> Directive | None:
    """The location nginx picks for `path` in `server`: an exact match, else the longest prefix
    (the template has no regular-expression locations)."""
    locations = find(server.block, "location")
    assert all(location.args[0] == "=" or len(location.args) == 1 for location in locations)
    for location in locations:
        if location.args == ["=", path]:
            return location
    prefixes = [
        location
        for location in locations
        if len(location.args) == 1 and path.startswith(location.args[0])
    ]
    return max(prefixes, key=lambda location: len(location.args[0]), default=None)


def _bytes(size: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024}
    return int(size[:-1]) * units[size[-1].lower()] if size[-1].lower() in units else int(size)


def test_the_main_file_includes_the_rendered_template_only(http: list[Directive]) -> None:
    """nginx.conf includes the file the image renders from the template, not the image's
    default site (conf.d/default.conf, nginx's welcome page on port 80)."""
    assert one(http, "include") == ["/etc/nginx/conf.d/carebus.conf"]
    assert TEMPLATE_FILE.name == "carebus.conf.template"


def test_every_public_service_has_its_own_host_and_nothing_else_is_proxied(
    servers: list[Directive], proxy_environment: dict[str, str]
) -> None:
    """Each API and Grafana is a TLS server of its own host name that passes every path to
    that service unchanged; the template fills in exactly the host names compose sets."""
    for service, upstream in UPSTREAMS.items():
        server = _tls_server(servers, service)
        assert one(server.block, "listen") == ["443", "ssl"], service
        assert one(server.block, "set") == ["$service", upstream], service
        for location in find(server.block, "location"):
            for proxy_pass in find(location.block, "proxy_pass"):
                assert proxy_pass.args == ["$service"], service  # no URI part: paths unchanged
        assert find(_location(server, "/").block, "proxy_pass"), service
    upstreams = re.findall(r"http://[\w-]+:\d+", TEMPLATE_FILE.read_text(encoding="utf-8"))
    assert sorted(upstreams) == sorted(UPSTREAMS.values())
    variables = set(re.findall(r"\$\{(\w+)\}", TEMPLATE_FILE.read_text(encoding="utf-8")))
    assert variables == {name for name in proxy_environment if name.startswith("CAREBUS_")}


def test_unknown_hosts_and_plain_http_get_nothing_from_the_apis(servers: list[Directive]) -> None:
    """A host name the proxy does not serve gets no TLS handshake; port 80 only redirects the
    hosts people type into a browser (inbox, audit, Grafana) to https and answers nothing for
    the API hosts."""
    [tls_default] = [
        s for s in servers if one(s.block, "listen") == ["443", "ssl", "default_server"]
    ]
    assert one(tls_default.block, "ssl_reject_handshake") == ["on"]
    assert not find(tls_default.block, "location")
    plain = [s for s in servers if one(s.block, "listen")[0] == "80"]
    [plain_default] = [s for s in plain if "default_server" in one(s.block, "listen")]
    assert one(plain_default.block, "return") == ["444"]
    [redirect] = [s for s in plain if s is not plain_default]
    assert one(redirect.block, "server_name") == [
        "${CAREBUS_INBOX_HOST}",
        "${CAREBUS_AUDIT_HOST}",
        "${CAREBUS_GRAFANA_HOST}",
    ]
    assert one(redirect.block, "return") == ["301", "https://$host$request_uri"]
    for server in plain:
        assert not find(server.block, "location"), "port 80 proxies something"


def test_tls_is_1_2_or_later_with_the_certificate_from_files(http: list[Directive]) -> None:
    """TLS 1.3 and 1.2 only, forward-secret AEAD ciphers for 1.2, no session tickets, and the
    certificate and key from compose's file secrets."""
    assert one(http, "ssl_protocols") == ["TLSv1.2", "TLSv1.3"]
    for cipher in one(http, "ssl_ciphers")[0].split(":"):
        assert cipher.startswith("ECDHE-"), cipher
        assert "GCM" in cipher or "CHACHA20" in cipher, cipher
    assert one(http, "ssl_session_tickets") == ["off"]
    assert one(http, "ssl_certificate") == ["/run/secrets/proxy_tls_cert"]
    assert one(http, "ssl_certificate_key") == ["/run/secrets/proxy_tls_key"]


# The TLS profile, shared by the http level and the MLLP stream.
TLS_PROFILE = (
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_prefer_server_ciphers",
    "ssl_session_timeout",
    "ssl_session_tickets",
    "ssl_certificate",
    "ssl_certificate_key",
)
# What the MLLP access log may say about a connection: never a byte of what it carried.
MLLP_LOG_VARIABLES = {
    "time_iso8601",
    "remote_addr",
    "ssl_protocol",
    "status",
    "bytes_received",
    "bytes_sent",
    "session_time",
}


def _mllp_server(stream: list[Directive]) -> Directive:
    [server] = find(stream, "server")
    return server


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(duration[:-1]) * units[duration[-1]]


def test_mllp_is_served_over_tls_like_the_apis(
    http: list[Directive], stream: list[Directive]
) -> None:
    """HL7 v2 over MLLP is TLS on HL7's registered port, with the http level's profile and
    certificate (TLS 1.2/1.3, the same ciphers, no session tickets), and a bounded handshake;
    nothing in the stream's server changes them."""
    server = _mllp_server(stream)
    assert one(server.block, "listen") == [MLLP_PORT, "ssl"]
    for name in TLS_PROFILE:
        assert one(stream, name) == one(http, name), name
    assert one(stream, "ssl_certificate") == ["/run/secrets/proxy_tls_cert"]
    assert one(stream, "ssl_session_tickets") == ["off"]
    assert _seconds(one(stream, "ssl_handshake_timeout")[0]) <= 10
    assert not [d for d in server.block or [] if d.name.startswith("ssl_")]


def test_mllp_passes_to_the_adapters_listener_looked_up_per_connection(
    http: list[Directive],
    stream: list[Directive],
    compose_services: dict[str, dict[str, Any]],
) -> None:
    """The stream passes each connection to the adapters' MLLP port on the compose network,
    through a variable (a map: stream has no `set` before nginx 1.19.3), so Docker's DNS is
    asked per connection and the proxy starts without the adapters."""
    server = _mllp_server(stream)
    [variable] = one(server.block, "proxy_pass")
    [upstream_map] = [d for d in find(stream, "map") if d.args[1] == variable]
    assert variable.startswith("$")
    adapters = compose_services["adapters"]
    port = adapters["environment"]["CAREBUS_MLLP_PORT"]
    assert one(upstream_map.block, "default") == [f"adapters:{port}"]
    assert len(upstream_map.block or []) == 1
    assert port in [str(exposed) for exposed in adapters["expose"]]
    assert port == str(Settings.model_fields["mllp_port"].default)
    assert one(stream, "resolver") == one(http, "resolver")
    assert one(stream, "resolver_timeout") == one(http, "resolver_timeout")


def test_mllp_connections_end_when_the_adapters_would_end_them(stream: list[Directive]) -> None:
    """An MLLP connection stays open while it is used, and the proxy gives up on a silent one
    exactly when the adapters do (CAREBUS_MLLP_IDLE_TIMEOUT_S), not sooner; a connection to
    an adapters container that does not answer fails within seconds."""
    server = _mllp_server(stream)
    idle = Settings.model_fields["mllp_idle_timeout_s"].default
    assert _seconds(one(server.block, "proxy_timeout")[0]) == idle
    assert _seconds(one(server.block, "proxy_connect_timeout")[0]) <= 10


def test_mllp_connections_are_limited_per_client_address(stream: list[Directive]) -> None:
    """One client address holds a few MLLP connections at most, fewer than the adapters allow
    in all (every connection reaches them from the proxy's address), so no sender can take
    every connection from the others."""
    server = _mllp_server(stream)
    [zone] = find(stream, "limit_conn_zone")
    assert zone.args[0] == "$binary_remote_addr"
    name = zone.args[1].removeprefix("zone=").split(":")[0]
    limit_zone, limit = one(server.block, "limit_conn")
    assert limit_zone == name
    assert 1 <= int(limit) < Settings.model_fields["mllp_max_connections"].default


def test_mllp_access_log_is_json_without_a_byte_of_the_messages(stream: list[Directive]) -> None:
    """Each MLLP connection is logged as JSON with the client's address, the TLS version, the
    outcome, the byte counts and the duration: never what was sent (MSH-8 carries the sender's
    token, the segments a person's nin)."""
    [log_format] = find(stream, "log_format")
    name, escape, *parts = log_format.args
    assert escape == "escape=json"
    assert one(stream, "access_log") == ["/dev/stdout", name]
    assert set(re.findall(r"\$(\w+)", "".join(parts))) == MLLP_LOG_VARIABLES


def test_every_response_has_hsts_and_no_server_version(
    http: list[Directive], servers: list[Directive]
) -> None:
    """HSTS for a year on every response (errors too), and a Server header without a version;
    no server or location adds headers of its own, which would drop HSTS there."""
    assert one(http, "add_header") == ["Strict-Transport-Security", "max-age=31536000", "always"]
    assert one(http, "server_tokens") == ["off"]
    assert "add_header" not in TEMPLATE_FILE.read_text(encoding="utf-8")


# The adapters' message routes (services/adapters/app.py) and the locations that carry them.
ADAPTER_MESSAGE_PATHS = {"/v1/adapters/plo", "/v1/adapters/hl7v2", "/fhir", "/fhir/Encounter"}
ADAPTER_MESSAGE_LOCATIONS = [["=", "/v1/adapters/plo"], ["=", "/v1/adapters/hl7v2"], ["/fhir"]]


def test_body_limits_are_carebus_settings(http: list[Directive], servers: list[Directive]) -> None:
    """The proxy refuses bodies past carebus's own limits: 64 KiB everywhere, the batch limit
    on the gateway's batch route only, the message limit on the adapters' message routes only
    (Grafana, not carebus, takes larger dashboards)."""
    fields = Settings.model_fields
    assert _bytes(one(http, "client_max_body_size")[0]) == fields["http_max_body_bytes"].default
    batch = _location(_tls_server(servers, "gateway"), "=", BATCH_PATH)
    assert _bytes(one(batch.block, "client_max_body_size")[0]) == (
        fields["http_max_batch_body_bytes"].default
    )
    raised_by_service = {"gateway": [["=", BATCH_PATH]], "adapters": ADAPTER_MESSAGE_LOCATIONS}
    for service in API_SERVICES:
        server = _tls_server(servers, service)
        raised = [
            location.args
            for location in find(server.block, "location")
            if find(location.block, "client_max_body_size")
        ]
        assert raised == raised_by_service.get(service, []), service


def test_each_adapters_route_is_allowed_the_body_the_adapters_take(
    http: list[Directive], servers: list[Directive]
) -> None:
    """Every route of the adapters app gets at the proxy the body limit the adapters apply to
    it (carebus.adapters.http.BodyLimits): 2 MiB on the message routes, 64 KiB elsewhere; a
    FHIR route added later falls under the /fhir prefix, where the adapters may hold it lower
    themselves."""
    settings = Settings()
    limits = BodyLimits.of(settings)
    paths = {
        route.path for route in build_adapters_app(settings).routes if isinstance(route, Route)
    }
    assert {path for path in paths if limits.of_path(path) != limits.default} == (
        ADAPTER_MESSAGE_PATHS
    )
    assert limits.of_path("/fhir") == settings.http_max_message_body_bytes
    default = _bytes(one(http, "client_max_body_size")[0])
    server = _tls_server(servers, "adapters")
    for path in sorted(paths - {"/metrics"}):  # never through the proxy (404)
        location = _matching_location(server, path)
        assert location is not None, path
        assert one(location.block, "proxy_pass") == ["$service"], path
        raised = find(location.block, "client_max_body_size")
        allowed = _bytes(raised[0].args[0]) if raised else default
        if path in ADAPTER_MESSAGE_PATHS or not path.startswith("/fhir"):
            assert allowed == limits.of_path(path), path


def test_timeouts_are_bounded(http: list[Directive]) -> None:
    """Slow clients and stuck services are cut: header, body, send and upstream timeouts, the
    upstream read longer than the gateway's wait for the broker."""
    for name in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert one(http, name)[0].endswith("s"), name
    read_timeout = int(one(http, "proxy_read_timeout")[0].removesuffix("s"))
    assert read_timeout > Settings.model_fields["produce_timeout_s"].default


def _headers(block: list[Directive] | None) -> dict[str, str]:
    return {d.args[0]: d.args[1] for d in find(block, "proxy_set_header")}


def test_forwarded_headers_are_the_proxys_never_the_clients(
    http: list[Directive], servers: list[Directive], proxy_environment: dict[str, str]
) -> None:
    """X-Forwarded-For is the client's address and X-Forwarded-Proto https, set by the proxy;
    every other forwarding header a client sent is dropped. Only the http level and Grafana's
    server set headers (a block with one proxy_set_header loses all it would inherit), and
    carebus is not told to trust them: uvicorn honours them from 127.0.0.1 only, and no
    service widens that."""
    headers = _headers(http)
    assert headers["X-Forwarded-For"] == "$remote_addr"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["Host"] == "$host"
    for dropped in (
        "X-Forwarded-Host",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "X-Forwarded-Server",
        "X-Real-IP",
        "Forwarded",
    ):
        assert headers[dropped] == "", dropped
    text = MAIN_FILE.read_text(encoding="utf-8") + TEMPLATE_FILE.read_text(encoding="utf-8")
    assert "$proxy_add_x_forwarded_for" not in text  # it would keep the client's list
    grafana = _tls_server(servers, "grafana")
    for server in servers:
        if server is not grafana:
            assert not find(server.block, "proxy_set_header"), one(server.block, "listen")
        for location in find(server.block, "location"):
            assert not find(location.block, "proxy_set_header"), location.args
    compose = COMPOSE_FILE.read_text(encoding="utf-8") + (PROJECT_ROOT / "Dockerfile").read_text()
    assert "FORWARDED_ALLOW_IPS" not in compose
    assert "forwarded_allow_ips" not in (PROJECT_ROOT / "carebus/adapters/http.py").read_text()


def test_only_grafana_is_offered_websocket_upgrades(
    http: list[Directive], servers: list[Directive]
) -> None:
    """The API hosts never pass a client's Upgrade on (their requests go with an empty
    Connection); Grafana's server does, for Grafana Live, and sets every forwarding header of
    the http level too, since its own proxy_set_header drops the inherited ones."""
    headers = _headers(http)
    assert "Upgrade" not in headers
    assert headers["Connection"] == ""
    grafana = _headers(_tls_server(servers, "grafana").block)
    assert grafana.pop("Upgrade") == "$http_upgrade"
    assert grafana.pop("Connection") == "$connection_upgrade"
    assert grafana == {name: value for name, value in headers.items() if name != "Connection"}
    [upgrade_map] = find(http, "map")
    assert upgrade_map.args == ["$http_upgrade", "$connection_upgrade"]


def test_sign_in_is_held_to_a_few_requests_per_address(
    http: list[Directive], servers: list[Directive]
) -> None:
    """Sign-in and its callbacks on the inbox and audit hosts answer anyone and store a row per
    /login, so each address gets 5 a second (a burst of 10, then 429) there, on top of the
    limit every other path keeps; nothing else is held to the sign-in zone."""
    zones = {d.args[1]: d.args for d in find(http, "limit_req_zone")}
    assert zones["zone=per_address:10m"] == [
        "$binary_remote_addr",
        "zone=per_address:10m",
        "rate=1000r/s",
    ]
    assert zones["zone=sign_in:10m"] == ["$binary_remote_addr", "zone=sign_in:10m", "rate=5r/s"]
    general = ["zone=per_address", "burst=2000", "nodelay"]
    assert one(http, "limit_req") == general
    assert one(http, "limit_req_status") == ["429"]
    for server in servers:
        assert not find(server.block, "limit_req"), one(server.block, "listen")
        for location in find(server.block, "location"):
            paths = SIGN_IN_PATHS.get(_service(server) or "", [])
            limits = [d.args for d in find(location.block, "limit_req")]
            if location.args[0] == "=" and location.args[1] in paths:
                # A location's own limit_req replaces the inherited one: both are repeated.
                assert limits == [general, ["zone=sign_in", "burst=10", "nodelay"]]
                assert one(location.block, "proxy_pass") == ["$service"]
            else:
                assert limits == [], location.args
    for service, paths in SIGN_IN_PATHS.items():
        server = _tls_server(servers, service)
        for path in paths:
            _location(server, "=", path)


def _service(server: Directive) -> str | None:
    """The public service a TLS server serves, by its host variable."""
    names = find(server.block, "server_name")
    if not names or len(names[0].args) != 1:
        return None
    found = re.fullmatch(r"\$\{CAREBUS_(\w+)_HOST\}", names[0].args[0])
    return found.group(1).lower() if found else None


def test_the_inbox_live_stream_passes_unbuffered(servers: list[Directive]) -> None:
    """Server-sent events reach the browser as the inbox writes them, and a stream outlives
    many keepalive intervals before the proxy gives up on a silent inbox."""
    stream = _location(_tls_server(servers, "inbox"), "=", STREAM_PATH)
    assert one(stream.block, "proxy_buffering") == ["off"]
    [read_timeout] = one(stream.block, "proxy_read_timeout")
    assert read_timeout.endswith("m")
    assert int(read_timeout.removesuffix("m")) * 60 >= 10 * KEEPALIVE_S
    source = (PROJECT_ROOT / "services" / "inbox" / "app.py").read_text(encoding="utf-8")
    assert f'"{STREAM_PATH}"' in source


def test_metrics_are_not_served_through_the_proxy(servers: list[Directive]) -> None:
    """/metrics stays on the internal port: the proxy answers 404 for it on every API host."""
    for service in API_SERVICES:
        metrics = _location(_tls_server(servers, service), "=", "/metrics")
        assert one(metrics.block, "return") == ["404"], service


def _nginx() -> str:
    binary = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if Path(path).exists()), None
    )
    if binary is None:
        pytest.fail(
            "nginx is not on PATH; install Debian's nginx-light package to check the proxy's "
            "configuration with the real binary"
        )
    return binary


def _load_stream_module(binary: str) -> str:
    """The `load_module` line the local nginx needs before a `stream` block: Debian's builds the
    stream module as a dynamic one (libnginx-mod-stream); the image's has it built in, so the
    repository's nginx.conf loads nothing."""
    built = subprocess.run(
        [binary, "-V"], capture_output=True, text=True, timeout=30, check=True
    ).stderr
    if "--with-stream=dynamic" not in built:
        return ""
    found = re.search(r"--modules-path=(\S+)", built)
    module = Path(found.group(1) if found else "/usr/lib/nginx/modules") / "ngx_stream_module.so"
    if not module.exists():
        pytest.fail(
            f"this nginx builds its stream module as {module}, which is missing; install "
            "Debian's libnginx-mod-stream package (`make install` does)"
        )
    return f"load_module {module};\n"


def test_nginx_accepts_the_configuration(tmp_path: Path, proxy_environment: dict[str, str]) -> None:
    """`nginx -t` passes on the configuration as the image renders it: the template filled in
    with compose's default host names, a real certificate and key, local paths, the MLLP stream
    included (its upstream, looked up per connection, need not resolve here)."""
    pki = LocalPki(tmp_path / "pki")
    pki.ensure()
    rendered = TEMPLATE_FILE.read_text(encoding="utf-8")
    for name, value in proxy_environment.items():
        if name.startswith("CAREBUS_"):
            default = re.fullmatch(r"\$\{\w+:-(.+)\}", value)
            assert default is not None, name
            rendered = rendered.replace(f"${{{name}}}", default.group(1))
    (tmp_path / "carebus.conf").write_text(rendered, encoding="utf-8")
    main = (
        MAIN_FILE.read_text(encoding="utf-8")
        .replace("user nginx;", "")  # the image's user; the test runs as whoever it is
        .replace("/run/nginx.pid", str(tmp_path / "nginx.pid"))
        .replace("/etc/nginx/conf.d/carebus.conf", str(tmp_path / "carebus.conf"))
        .replace("/run/secrets/proxy_tls_cert", str(pki.broker_file))
        .replace("/run/secrets/proxy_tls_key", str(pki.broker_file))
    )
    binary = _nginx()
    (tmp_path / "nginx.conf").write_text(_load_stream_module(binary) + main, encoding="utf-8")
    result = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr
    assert "[emerg]" not in result.stderr, result.stderr
