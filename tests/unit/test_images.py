"""Stock images pinned by digest (docs/security.md 6d, infra/images.md) and the tool that checks
and refreshes the pins against Docker Hub, here through httpx.MockTransport: no network."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from carebus.runtime.config import PROJECT_ROOT
from carebus_dev import images
from carebus_dev.images import DockerHub, Pin, RegistryError, check, find_pins, main, rewrite

PINNED = re.compile(r"^[a-z0-9./_-]+:[A-Za-z0-9_.-]+@sha256:[0-9a-f]{64}$")
TABLE_ROW = re.compile(
    r"^\| (?P<name>[a-z0-9./_-]+) \| (?P<tag>[A-Za-z0-9_.-]+) "
    r"\| `(?P<digest>sha256:[0-9a-f]{64})` \|",
    re.MULTILINE,
)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


def _repository_pins() -> list[Pin]:
    return [
        pin
        for name in images.PINNED_FILES
        for pin in find_pins(name, (PROJECT_ROOT / name).read_text(encoding="utf-8"))
    ]


def test_every_stock_compose_image_is_pinned_by_digest() -> None:
    """Each service's image, carebus's own (built here) aside, is name:tag@sha256:<64 hex>."""
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    # A set: the three Kafka nodes share one image (one pin, in docker-compose.yml's x-kafka-node).
    stock = {
        service["image"]
        for service in compose["services"].values()
        if not service["image"].startswith("carebus:")
    }
    assert len(stock) == 5
    for image in stock:
        assert PINNED.match(image), f"docker-compose.yml: {image} is not pinned by digest"


def test_every_dockerfile_base_is_pinned_by_digest() -> None:
    """Each FROM of the Dockerfile names its image as name:tag@sha256:<64 hex>."""
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert len(bases) == 2
    for base in bases:
        assert PINNED.match(base), f"Dockerfile: {base} is not pinned by digest"


def test_the_tool_sees_every_pinned_image() -> None:
    """The tool's parser finds the same seven references as YAML and the FROM lines do, so
    `make images-check` leaves none out."""
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text(encoding="utf-8")
    wanted = sorted(
        [
            *{
                s["image"]
                for s in compose["services"].values()
                if not s["image"].startswith("carebus:")
            },
            *re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE),
        ]
    )
    assert sorted(f"{p.name}:{p.tag}@{p.digest}" for p in _repository_pins()) == wanted


def test_the_images_table_lists_exactly_the_pinned_images() -> None:
    """infra/images.md has one row per pinned image, with the digest the files pin."""
    table = (PROJECT_ROOT / images.IMAGES_DOC).read_text(encoding="utf-8")
    rows = {(m["name"], m["tag"], m["digest"]) for m in TABLE_ROW.finditer(table)}
    assert len(rows) == len(TABLE_ROW.findall(table)), "a row is listed twice"
    assert rows == {(p.name, p.tag, p.digest) for p in _repository_pins()}


Handler = Callable[[httpx.Request], httpx.Response]


def _hub(digests: dict[str, str], seen: list[httpx.Request] | None = None) -> Handler:
    """A fake Docker Hub: a token per repository, then the digest of each `repository:tag`."""

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if request.url.host == "auth.docker.io":
            scope = request.url.params["scope"]
            return httpx.Response(200, json={"token": f"token-for-{scope}"})
        match = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", request.url.path)
        assert match is not None, request.url
        expected = f"Bearer token-for-repository:{match[1]}:pull"
        if request.headers.get("Authorization") != expected:
            return httpx.Response(401)
        digest = digests.get(f"{match[1]}:{match[2]}")
        if digest is None:
            return httpx.Response(404)
        return httpx.Response(200, headers={"Docker-Content-Digest": digest})

    return handle


def _registry(handler: Handler) -> DockerHub:
    return DockerHub(httpx.Client(transport=httpx.MockTransport(handler)))


def test_the_registry_is_asked_with_a_pull_token_for_the_tags_index() -> None:
    """An anonymous pull token for the repository (official images under library/), then a HEAD
    of the tag's manifest accepting an index first; the digest is the response's header."""
    seen: list[httpx.Request] = []
    registry = _registry(_hub({"library/postgres:15.18": NEW}, seen))
    assert registry.digest("library/postgres", "15.18") == NEW
    token, manifest = seen
    assert token.method == "GET"
    assert str(token.url).startswith(images.AUTH_URL)
    assert token.url.params["service"] == "registry.docker.io"
    assert token.url.params["scope"] == "repository:library/postgres:pull"
    assert manifest.method == "HEAD"
    assert str(manifest.url) == f"{images.REGISTRY_URL}/v2/library/postgres/manifests/15.18"
    accepted = manifest.headers["Accept"]
    assert accepted.startswith("application/vnd.oci.image.index.v1+json")
    assert "application/vnd.docker.distribution.manifest.list.v2+json" in accepted
    assert "application/vnd.docker.distribution.manifest.v2+json" in accepted


def test_official_and_namespaced_images_map_to_their_repositories() -> None:
    """`postgres` is Docker Hub's `library/postgres`; `apache/kafka` stays as it is."""
    [postgres, kafka] = find_pins("x", f"  image: postgres:15.18@{OLD}\n  image: apache/kafka:4\n")
    assert postgres.repository == "library/postgres"
    assert kafka.repository == "apache/kafka"
    assert kafka.digest is None


def test_a_pin_whose_tag_moved_on_is_reported_as_differing() -> None:
    """A digest the registry no longer gives the tag fails the check, naming both digests."""
    [pin] = find_pins("docker-compose.yml", f"    image: nginx:1.28.0-alpine@{OLD}\n")
    [finding] = check([pin], _registry(_hub({"library/nginx:1.28.0-alpine": NEW})))
    assert not finding.holds
    assert "differs" in str(finding)
    assert "nginx:1.28.0-alpine (docker-compose.yml)" in str(finding)
    assert OLD in str(finding)
    assert NEW in str(finding)


def test_a_pin_the_registry_confirms_holds() -> None:
    """The same digest: the pin holds; a repository and tag used twice is asked once."""
    seen: list[httpx.Request] = []
    text = f"FROM python:3.11.14-slim@{OLD} AS build\nRUN true\nFROM python:3.11.14-slim@{OLD}\n"
    pins = find_pins("Dockerfile", text)
    findings = check(pins, _registry(_hub({"library/python:3.11.14-slim": OLD}, seen)))
    assert [f.holds for f in findings] == [True, True]
    assert len(seen) == 2


def _failing(response: httpx.Response | Exception, host: str) -> Handler:
    hub = _hub({"library/nginx:1": NEW})

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host != host:
            return hub(request)
        if isinstance(response, Exception):
            raise response
        return response

    return handle


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (_failing(httpx.Response(503), "registry-1.docker.io"), "HTTP 503"),
        (_failing(httpx.Response(200), "registry-1.docker.io"), "no usable digest"),
        (
            _failing(
                httpx.Response(200, headers={"Docker-Content-Digest": "md5:x"}),
                "registry-1.docker.io",
            ),
            "no usable digest",
        ),
        (_failing(httpx.ConnectError("no route to host"), "registry-1.docker.io"), "ConnectError"),
        (_failing(httpx.Response(429), "auth.docker.io"), "token request answered HTTP 429"),
        (_failing(httpx.Response(200, text="<html>"), "auth.docker.io"), "not JSON"),
        (_failing(httpx.Response(200, json={}), "auth.docker.io"), "no token"),
        (_failing(httpx.ConnectError("no route to host"), "auth.docker.io"), "ConnectError"),
    ],
)
def test_a_registry_failure_is_reported_as_could_not_check(handler: Handler, reason: str) -> None:
    """Whatever goes wrong asking the registry, the pin fails as "could not check", with why."""
    with pytest.raises(RegistryError, match=reason):
        _registry(handler).digest("library/nginx", "1")
    [pin] = find_pins("docker-compose.yml", f"    image: nginx:1@{OLD}\n")
    [finding] = check([pin], _registry(handler))
    assert finding.current is None
    assert not finding.holds
    assert str(finding).startswith("could not check nginx:1 (docker-compose.yml)")
    assert reason in str(finding)


def test_an_image_outside_docker_hub_cannot_be_checked() -> None:
    """Only Docker Hub is asked; another registry's image fails instead of being skipped."""
    [pin] = find_pins("x", f"  image: ghcr.io/org/app:1@{OLD}\n")
    [finding] = check([pin], _registry(_hub({})))
    assert finding.current is None
    assert "only Docker Hub" in str(finding)


def test_a_reference_the_tool_cannot_read_is_an_error_naming_its_line() -> None:
    """A reference without a tag (or with a malformed digest) is refused, not passed over."""
    with pytest.raises(ValueError, match=r"docker-compose.yml:2: 'postgres@sha256:12'"):
        find_pins("docker-compose.yml", "services:\n  image: postgres@sha256:12\n")


def test_a_rewrite_changes_the_digests_and_nothing_else() -> None:
    """Refreshing the repository's own files changes each pinned digest and keeps every other
    byte: comments, the carebus image, the build stage name, line endings."""
    for name in images.PINNED_FILES:
        text = (PROJECT_ROOT / name).read_bytes().decode()
        pins = find_pins(name, text)
        replaced = {pin: f"sha256:{index:064x}" for index, pin in enumerate(pins)}
        rewritten = rewrite(text, pins, replaced)
        expected = text
        for pin, digest in replaced.items():
            assert pin.digest is not None
            expected = expected.replace(pin.digest, digest, 1)
        assert rewritten == expected


def test_a_rewrite_pins_a_reference_by_tag_only() -> None:
    """`name:tag` becomes `name:tag@sha256:…`; the comment after it and CRLF endings stay."""
    text = "services:\r\n  db:\r\n    image: postgres:15.18  # why\r\n"
    pins = find_pins("docker-compose.yml", text)
    assert rewrite(text, pins, {pins[0]: NEW}) == (
        f"services:\r\n  db:\r\n    image: postgres:15.18@{NEW}  # why\r\n"
    )


def _copy(root: Path) -> None:
    for name in (*images.PINNED_FILES, images.IMAGES_DOC):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_ROOT / name, root / name)


def _current(pins: list[Pin], changed: str | None = None) -> dict[str, str]:
    return {f"{p.repository}:{p.tag}": NEW if p.name == changed else str(p.digest) for p in pins}


def test_check_passes_only_when_every_pin_is_the_tags_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` exits 0 when all pins hold, 1 naming the image when one has moved on."""
    _copy(tmp_path)
    pins = _repository_pins()
    ok = httpx.MockTransport(_hub(_current(pins)))
    assert main(["check"], tmp_path, ok) == 0
    moved = httpx.MockTransport(_hub(_current(pins, changed="grafana/grafana")))
    assert main(["check"], tmp_path, moved) == 1
    output = capsys.readouterr().out
    assert "differs          grafana/grafana:12.1.1 (docker-compose.yml)" in output


def test_check_fails_when_the_registry_cannot_be_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No network: every pin is "could not check" and the run fails; nothing is rewritten."""
    _copy(tmp_path)

    def offline(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route to host", request=request)

    for command in ("check", "refresh"):
        assert main([command], tmp_path, httpx.MockTransport(offline)) == 1
    assert capsys.readouterr().out.count("could not check") == 2 * len(_repository_pins())
    for name in (*images.PINNED_FILES, images.IMAGES_DOC):
        assert (tmp_path / name).read_bytes() == (PROJECT_ROOT / name).read_bytes()


def test_refresh_rewrites_the_moved_pin_in_the_files_and_the_table(tmp_path: Path) -> None:
    """`refresh` puts the tag's new digest into the Dockerfile (both stages) and the table's
    row, changes nothing else, and a check afterwards passes."""
    _copy(tmp_path)
    pins = _repository_pins()
    [old] = {p.digest for p in pins if p.name == "python"}
    assert old is not None
    moved = httpx.MockTransport(_hub(_current(pins, changed="python")))
    assert main(["refresh"], tmp_path, moved) == 0
    for name in (*images.PINNED_FILES, images.IMAGES_DOC):
        original = (PROJECT_ROOT / name).read_bytes().decode()
        assert (tmp_path / name).read_bytes().decode() == original.replace(old, NEW)
    assert (tmp_path / "Dockerfile").read_text(encoding="utf-8").count(NEW) == 2
    assert main(["check"], tmp_path, moved) == 0


def test_the_tool_wants_one_command(capsys: pytest.CaptureFixture[str]) -> None:
    """Anything but `check` or `refresh` is a usage error (exit 2), asking nothing."""
    assert main([]) == 2
    assert main(["check", "--all"]) == 2
    assert "usage" in capsys.readouterr().err
