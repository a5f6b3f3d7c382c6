"""The TLS proxy in front of the public APIs: infra/proxy/nginx.conf and its server template."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from carebus.runtime.config import Settings
from carebus_dev.stack.kafka_pki import LocalPki
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
    "grafana": "http://grafana:3000",
}
# Where people sign in: unauthenticated, and each /login stores a sign-in row.
SIGN_IN_PATHS = {
    "inbox": ["/login", "/callback"],
    "audit": ["/login", "/callback", "/patient/login", "/patient/callback"],
}
STREAM_PATH = "/v1/alerts/stream"  # the inbox's live alert stream (services/inbox/app.py)
BATCH_PATH = "/v1/events:batch"  # the one route with the larger body limit


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
def servers() -> list[Directive]:
    return find(parse(TEMPLATE_FILE.read_text(encoding="utf-8")), "server")


@pytest.fixture(scope="module")
def proxy_environment() -> dict[str, str]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    environment: dict[str, str] = compose["services"]["proxy"]["environment"]
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


def test_every_response_has_hsts_and_no_server_version(
    http: list[Directive], servers: list[Directive]
) -> None:
    """HSTS for a year on every response (errors too), and a Server header without a version;
    no server or location adds headers of its own, which would drop HSTS there."""
    assert one(http, "add_header") == ["Strict-Transport-Security", "max-age=31536000", "always"]
    assert one(http, "server_tokens") == ["off"]
    assert "add_header" not in TEMPLATE_FILE.read_text(encoding="utf-8")


def test_body_limits_are_carebus_settings(http: list[Directive], servers: list[Directive]) -> None:
    """The proxy refuses bodies past carebus's own limits: 64 KiB everywhere, the batch limit
    on the gateway's batch route only (Grafana, not carebus, takes larger dashboards)."""
    fields = Settings.model_fields
    assert _bytes(one(http, "client_max_body_size")[0]) == fields["http_max_body_bytes"].default
    batch = _location(_tls_server(servers, "gateway"), "=", BATCH_PATH)
    assert _bytes(one(batch.block, "client_max_body_size")[0]) == (
        fields["http_max_batch_body_bytes"].default
    )
    for service in ("gateway", "registry", "audit", "inbox"):
        server = _tls_server(servers, service)
        raised = [
            location.args
            for location in find(server.block, "location")
            if find(location.block, "client_max_body_size")
        ]
        assert raised == ([["=", BATCH_PATH]] if service == "gateway" else []), service


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
    for service in ("gateway", "registry", "audit", "inbox"):
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


def test_nginx_accepts_the_configuration(tmp_path: Path, proxy_environment: dict[str, str]) -> None:
    """`nginx -t` passes on the configuration as the image renders it: the template filled in
    with compose's default host names, a real certificate and key, local paths."""
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
    (tmp_path / "nginx.conf").write_text(main, encoding="utf-8")
    result = subprocess.run(
        [_nginx(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr
    assert "[emerg]" not in result.stderr, result.stderr
