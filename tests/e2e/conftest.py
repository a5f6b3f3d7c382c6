"""Browser tests: Debian's headless Chromium driven by Selenium, never anything downloaded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

from carebus_dev.testing import ServiceProcess, TestStack

# Debian's packages (`make tools` installs them). Both paths are given explicitly, so Selenium
# Manager never runs and never tries to fetch a browser or a driver.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in containers, where Chromium's sandbox cannot start
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
    "--disable-gpu",
    "--window-size=1400,1000",
)


@pytest.fixture(scope="module")
def alert_store(stack: TestStack) -> Iterator[ServiceProcess]:
    service = stack.start_service("alert_store")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def oidc_issuer(stack: TestStack) -> Iterator[ServiceProcess]:
    """The development OpenID Connect issuer people sign in with (the inbox is its client)."""
    service = stack.start_service("oidc_issuer")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def inbox(
    stack: TestStack, alert_store: ServiceProcess, oidc_issuer: ServiceProcess
) -> Iterator[ServiceProcess]:
    service = stack.start_service("inbox")
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium (own profile, so no cookie is shared between tests)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: run `make tools` "
            "(apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    monkeypatch.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager stays offline
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")
    )
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except WebDriverException as exc:
        log = tmp_path / "chromedriver.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        pytest.fail(f"Chromium did not start: {exc.msg}\n{tail}", pytrace=False)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
