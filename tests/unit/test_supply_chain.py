"""The supply chain and secrets: every dependency locked with hashes and in step with
pyproject.toml, one Kafka version everywhere, secrets from files and never the public default in
production (docs/security.md, issue 14 items 6 and 7)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import ValidationError

from carebus.runtime.config import PROJECT_ROOT, Settings

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
REQUIREMENTS = PROJECT_ROOT / "requirements"
PINNED = re.compile(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)", re.MULTILINE)


def locked(name: str, folder: Path = REQUIREMENTS) -> dict[str, str]:
    """Package name (canonical) -> pinned version, of a lock file; each pin must carry hashes."""
    text = (folder / name).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    pins: dict[str, str] = {}
    for entry in entries:
        match = PINNED.match(entry)
        if match is None:
            continue
        assert "--hash=sha256:" in entry, f"{name}: {match[1]} is pinned without a hash"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def build_requirements() -> list[Requirement]:
    lines = (REQUIREMENTS / "build.in").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


RUNTIME = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
DEV = [Requirement(text) for text in PYPROJECT["project"]["optional-dependencies"]["dev"]]


@pytest.mark.parametrize(
    ("lock", "wanted"),
    [
        ("base.lock", RUNTIME + build_requirements()),
        ("dev.lock", RUNTIME + DEV + build_requirements()),
    ],
)
def test_every_dependency_is_locked_at_a_version_pyproject_allows(
    lock: str, wanted: list[Requirement]
) -> None:
    pins = locked(lock)
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is missing from requirements/{lock}: make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock} pins {requirement.name} {pins[name]}, "
            f"pyproject.toml asks {requirement.specifier}: make lock"
        )


def test_the_image_carries_no_development_tool() -> None:
    base = locked("base.lock")
    for requirement in DEV:
        runtime_names = {canonicalize_name(r.name) for r in RUNTIME}
        if canonicalize_name(requirement.name) not in runtime_names:
            assert canonicalize_name(requirement.name) not in base, requirement.name


def test_make_the_dockerfile_and_ci_install_from_the_lock() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r $(LOCK)" in makefile
    assert "LOCK := requirements/dev.lock" in makefile
    assert "pip install --require-hashes -r requirements/base.lock" in dockerfile
    # Nothing resolves dependencies outside the lock.
    assert "--no-deps" in makefile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile
    assert (PROJECT_ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_pip_itself_comes_first_from_its_own_lock() -> None:
    """The venv's bundled pip mis-resolves a locked package asked for with an extra
    (requirements/pip.in): pip is upgraded from a hashed lock before anything else, at the
    version dev.lock pins, in make and in the image."""
    pip = locked("pip.lock")
    assert set(pip) == {"pip"}
    assert pip["pip"] == locked("dev.lock")["pip"], "pip.lock and dev.lock disagree: make lock"
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "PIP_LOCK := requirements/pip.lock" in makefile
    assert makefile.index("-r $(PIP_LOCK)") < makefile.index("-r $(LOCK)")
    assert dockerfile.index("-r requirements/pip.lock") < dockerfile.index(
        "-r requirements/base.lock"
    )


def test_one_kafka_version_everywhere() -> None:
    pom = (PROJECT_ROOT / "infra" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert match is not None
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["kafka-1"]["image"]
    assert image.split("@")[0] == f"apache/kafka:{match[1]}"


def test_a_lock_without_hashes_is_caught(tmp_path: Path) -> None:
    (tmp_path / "x.lock").write_text("orjson==3.10.0\n    # via carebus\n")
    with pytest.raises(AssertionError, match="without a hash"):
        locked("x.lock", tmp_path)


def test_secrets_come_from_files_and_production_refuses_the_public_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """carebus reads a secret from CAREBUS_SECRETS_DIR (compose's /run/secrets), puts the
    database password into the DSN, and will not run in production on the local secret."""
    (tmp_path / "carebus_subject_key_secret").write_text("a-long-random-secret\n")
    (tmp_path / "carebus_webhook_secret_key").write_text("another-long-random-secret\n")
    (tmp_path / "carebus_postgres_password").write_text("p@ss/word\n")
    for name in list(os.environ):
        if name.startswith("CAREBUS_"):
            monkeypatch.delenv(name)
    settings = Settings(
        _secrets_dir=tmp_path,  # type: ignore[call-arg]  # pydantic-settings' init option
        environment="production",
        postgres_dsn="postgresql://carebus@postgres:5432/carebus",
    )
    assert settings.subject_key_secret.get_secret_value() == "a-long-random-secret"
    assert settings.postgres_dsn == "postgresql://carebus:p%40ss%2Fword@postgres:5432/carebus"
    with pytest.raises(ValidationError, match="subject_key_secret"):
        Settings(environment="production")
    assert Settings(environment="local").subject_key_secret.get_secret_value()
