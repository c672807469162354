"""The outbox in a real headless Chromium: a view longer than a page walked with its "Next",
"Previous" and "First page" links, a filter kept across pages, a retry from a later page that
comes back to it, a broken page link explained, and the pager in Turkish. Screenshots go to
tests/artifacts/screenshots/."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from playwright.sync_api import expect

from reminders.models import Reminder
from reminders.runtime import Runtime
from tests import factories
from tests.browser.conftest import NOW, shot, sign_in

pytestmark = pytest.mark.browser
FAILED = 70  # a page and a bit


@pytest.fixture(scope="module", autouse=True)
def failed_reminders(console_runtime: Runtime) -> None:
    """Failed reminders an hour apart, on two protocols, that staff may still retry."""
    with console_runtime.sessions() as session, session.begin():
        patient = factories.patient(
            session, external_id="F-1", given_name="Emre", family_name="Şahin"
        )
        for n in range(FAILED):
            protocol = ("chronic_migraine", "bladder_dysfunction")[n % 2]
            treatment = factories.treatment(
                session, patient, NOW.date() - dt.timedelta(days=200 + n), protocol=protocol
            )
            treatment.needs_plan = False
            due = NOW - dt.timedelta(hours=n)
            session.add(
                Reminder(
                    treatment_id=treatment.id,
                    patient_id=patient.id,
                    protocol=protocol,
                    step="due",
                    status="failed",
                    due_at=due,
                    expires_at=NOW + dt.timedelta(days=7),
                    next_attempt_at=due,
                    last_error="the number does not exist",
                )
            )


def _rows(page) -> object:
    return page.locator("#outbox tbody tr")


def test_walking_the_failed_view_and_retrying_from_its_second_page(page) -> None:
    sign_in(page, "staff@example.com")
    page.goto("/admin/outbox?view=failed")
    expect(page.locator("#outbox-order")).to_have_text("Latest due first.")
    expect(_rows(page)).to_have_count(50)
    expect(page.get_by_role("link", name="Previous")).to_have_count(0)
    expect(page.get_by_role("link", name="First page")).to_have_count(0)
    page.get_by_role("link", name="Next").click()
    expect(page).to_have_url(re.compile(r"view=failed.*after="))
    expect(_rows(page)).to_have_count(FAILED - 50)
    expect(page.get_by_role("link", name="Next")).to_have_count(0)
    expect(page.get_by_role("link", name="First page")).to_be_visible()
    shot(page, "20-outbox-second-page")
    second_page = page.url
    retry = page.get_by_role("button", name=re.compile(r"^Retry reminder \d+$")).first
    retry.click()
    expect(page.get_by_role("status")).to_have_text("The reminder is queued to go out again.")
    assert page.url.startswith(second_page)
    expect(_rows(page)).to_have_count(FAILED - 51)
    page.get_by_role("link", name="Previous").click()
    expect(page).to_have_url(re.compile(r"before="))
    expect(_rows(page)).to_have_count(50)
    expect(page.get_by_role("link", name="Previous")).to_have_count(0)
    expect(page.get_by_role("link", name="Next")).to_be_visible()


def test_a_filter_holds_on_the_next_page(page) -> None:
    sign_in(page, "staff@example.com")
    page.goto("/admin/outbox?view=failed")
    page.get_by_label("Protocol").select_option("chronic_migraine")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"protocol=chronic_migraine"))
    expect(page.get_by_role("link", name="Next")).to_have_count(0)  # 35 or fewer
    rows = _rows(page)
    expect(rows.first).to_contain_text("chronic_migraine")
    expect(rows.filter(has_text="bladder_dysfunction")).to_have_count(0)


def test_a_broken_page_link_is_explained(page) -> None:
    sign_in(page, "staff@example.com")
    response = page.goto("/admin/outbox?view=failed&after=yesterday")
    assert response is not None and response.status == 400
    expect(page.get_by_role("alert")).to_contain_text(
        "The page link is not valid (after=yesterday)"
    )
    shot(page, "21-outbox-broken-link")


def test_the_pager_reads_in_turkish(browser, base_url) -> None:
    context = browser.new_context(base_url=base_url, viewport={"width": 768, "height": 1024})
    context.set_default_timeout(10_000)
    tab = context.new_page()
    sign_in(tab, "staff@example.com")
    tab.get_by_label("Language").select_option("tr")
    tab.get_by_role("button", name="Change").click()
    expect(tab.get_by_role("heading", name="Pano")).to_be_visible()
    tab.goto("/admin/outbox?view=failed")
    expect(tab.locator("#outbox-order")).to_have_text("Zamanı en yeni olan en üstte.")
    tab.get_by_role("link", name="Sonraki").click()
    expect(tab.get_by_role("link", name="İlk sayfa")).to_be_visible()
    expect(tab.get_by_role("link", name="Önceki")).to_be_visible()
    overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the outbox is {overflow}px wider than a tablet"
    shot(tab, "22-tr-outbox-second-page")
    context.close()
