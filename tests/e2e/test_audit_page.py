"""The audit page in headless Chromium: a patient signs in with (development) ID-porten and reads
their own log; a privacy officer signs in and looks a person up; neither breaks the page's CSP,
and the identity number never reaches the address bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import asyncpg
import pytest
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from carebus.adapters.auth import ensure_organisation
from carebus.domain.identity import subject_key
from carebus_dev.oidc_issuer.app import PATIENTS_BY_KEY
from carebus_dev.stack.devdata import DEMO_MUNICIPALITY
from carebus_dev.testing import ServiceProcess, TestStack, insert_disclosure
from tests.e2e.test_inbox_page import RECORD_CSP_VIOLATIONS

pytestmark = pytest.mark.integration

KARI = PATIENTS_BY_KEY["patient-kari-high"]
WAIT_S = 30.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def audit(stack: TestStack, oidc_issuer: ServiceProcess) -> Iterator[ServiceProcess]:
    service = stack.start_service("audit")
    yield service
    service.stop()


@pytest.fixture
async def disclosed(stack: TestStack, db: asyncpg.Connection) -> str:
    """A delivery about Kari to the demo municipality (which makes its privacy officer one who
    may ask about her); its event id."""
    await ensure_organisation(db, agency="municipality", org_id=DEMO_MUNICIPALITY)
    key = subject_key(KARI.nin, stack.settings.subject_key_secret.get_secret_value())
    return await insert_disclosure(db, key, DEMO_MUNICIPALITY)


def wait(driver: WebDriver, condition: Callable[[], T | None], what: str) -> T:
    try:
        # The page swaps its sections on sign-in and sign-out: an element found a moment ago may
        # be gone by the time it is asked whether it shows, which is just "not yet".
        result: T = WebDriverWait(
            driver,
            WAIT_S,
            poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(lambda _driver: condition() or False)
    except TimeoutException:
        tail = driver.page_source[-3000:]
        raise AssertionError(f"not within {WAIT_S:.0f} s: {what}\n{tail}") from None
    return result


def shown(driver: WebDriver, selector: str) -> bool:
    return driver.find_element(By.CSS_SELECTOR, selector).is_displayed()


def sign_in(driver: WebDriver, audit: ServiceProcess, link: str, person: str) -> None:
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CSP_VIOLATIONS}
    )
    driver.get(f"{audit.url}/")
    wait(driver, lambda: shown(driver, link), f"the link {link}")
    driver.find_element(By.CSS_SELECTOR, link).click()
    wait(driver, lambda: driver.find_elements(By.ID, f"person-{person}"), "the issuer page")
    driver.find_element(By.ID, f"person-{person}").click()


def csp_violations(driver: WebDriver) -> list[str]:
    events: list[str] = driver.execute_script("return window.__cspViolations || [];")
    console = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return events + [
        str(entry["message"]) for entry in console if "Content Security Policy" in entry["message"]
    ]


def test_a_patient_signs_in_with_id_porten_and_reads_their_log(
    audit: ServiceProcess, browser: WebDriver, disclosed: str
) -> None:
    """Kari's log lists the delivery about her; signing out shows the sign-in links again."""
    sign_in(browser, audit, "a#signin-patient", KARI.key)
    wait(browser, lambda: shown(browser, "#patient"), "the patient's log")
    rows = browser.find_elements(By.CSS_SELECTOR, "#log tbody tr")
    assert rows, "the log has rows"
    assert KARI.nin not in browser.page_source
    assert KARI.nin not in browser.current_url
    assert csp_violations(browser) == [], "the page broke its own CSP"
    browser.find_element(By.ID, "signout").click()
    wait(browser, lambda: shown(browser, "#signin"), "the sign-in links after sign-out")


def test_a_privacy_officer_signs_in_and_looks_a_person_up(
    audit: ServiceProcess, browser: WebDriver, disclosed: str
) -> None:
    """The query's answer shows the delivery; the nin goes in the body, never the URL."""
    sign_in(browser, audit, "a#signin-officer", "municipality-privacy-officer")
    wait(browser, lambda: shown(browser, "#officer"), "the privacy officer's form")
    browser.find_element(By.ID, "nin").send_keys(KARI.nin)
    browser.find_element(By.ID, "purpose").send_keys("browser test")
    browser.find_element(By.CSS_SELECTOR, "#query button[type=submit]").click()
    wait(browser, lambda: shown(browser, "#answer"), "the answer")
    assert browser.find_elements(By.CSS_SELECTOR, "#items tbody tr")
    assert KARI.nin not in browser.current_url
    assert not shown(browser, "#error")
    assert csp_violations(browser) == [], "the page broke its own CSP"
