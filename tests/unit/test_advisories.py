"""`make audit` picks an advisory service that answers, and fails plainly when none does."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from carebus_dev import advisories
from carebus_dev.advisories import SERVICES, Service, choose, pip_audit_command


def test_the_first_service_that_answers_is_chosen() -> None:
    asked: list[str] = []

    def ask(service: Service) -> str | None:
        asked.append(service.name)
        return "HTTP 404" if service.name == "pypi" else None

    chosen, refusals = choose(SERVICES, ask)
    assert chosen is not None
    assert chosen.name == "osv"
    assert asked == ["pypi", "osv"]
    assert refusals == ["pypi (https://pypi.org/pypi/pip/24.0/json): HTTP 404"]


def test_no_service_fails_without_running_pip_audit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pip-audit must not run without an advisory service")

    monkeypatch.setattr(subprocess, "run", never)
    assert advisories.main(ask=lambda _service: "ConnectError") == 2
    err = capsys.readouterr().err
    assert "nothing was audited" in err
    assert err.count("advisory service unreachable") == len(SERVICES)


def test_pip_audit_runs_strict_against_the_chosen_service() -> None:
    command = pip_audit_command(SERVICES[1])
    assert command[1:] == [
        "--strict",
        "--progress-spinner",
        "off",
        "--vulnerability-service",
        "osv",
        "--require-hashes",
        "-r",
        str(advisories.LOCK),
    ]


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (404, {}, "HTTP 404"),
        (200, {"info": {}}, "no `vulnerabilities`"),
        (200, None, "not JSON"),
    ],
)
def test_a_mirror_is_not_an_advisory_service(
    monkeypatch: pytest.MonkeyPatch, status: int, body: dict[str, object] | None, problem: str
) -> None:
    """A package mirror that answers the JSON API without advisories must not count."""

    def answer(method: str, url: str, **_kwargs: object) -> httpx.Response:
        request = httpx.Request(method, url)
        if body is None:
            return httpx.Response(status, text="<html>", request=request)
        return httpx.Response(status, json=body, request=request)

    monkeypatch.setattr(httpx, "request", answer)
    found = advisories.probe(SERVICES[0])
    assert found is not None
    assert problem in found
    monkeypatch.setattr(
        httpx,
        "request",
        lambda method, url, **_k: httpx.Response(
            200, json={"vulnerabilities": []}, request=httpx.Request(method, url)
        ),
    )
    assert advisories.probe(SERVICES[0]) is None
