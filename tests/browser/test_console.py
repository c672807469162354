"""The staff console in a real headless Chromium: sign-in, a template with its live preview,
a refused template, restoring a version, finding a patient, the dashboard, every page on a
tablet in Turkish. Each step leaves a screenshot in tests/artifacts/screenshots/."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot, sign_in

pytestmark = pytest.mark.browser


def test_signing_in_refuses_a_wrong_password_then_opens_the_dashboard(page) -> None:
    page.goto("/admin/dashboard")
    expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    page.get_by_label("Email").fill("staff@example.com")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("Wrong email or password")
    shot(page, "01-sign-in-refused")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/admin/dashboard$"))
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def test_signing_in_works_with_the_keyboard_alone(page) -> None:
    page.goto("/admin/login")
    # The email field takes the focus by itself (autofocus, applied just after load: typing
    # before that lost the first letter once in CI).
    expect(page.get_by_label("Email")).to_be_focused()
    page.keyboard.type("staff@example.com")
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/admin/dashboard$"))


def test_editing_a_template_shows_the_live_preview_and_saves_a_version(page) -> None:
    sign_in(page, "staff@example.com")
    page.goto("/admin/templates")
    shot(page, "02-templates-grid")
    page.get_by_role("link", name="due sms tr: default").click()
    text = page.get_by_label("Text", exact=True)
    text.fill(
        "{{ patient.given_name }}, tedaviniz {{ window.open | date('medium') }} "
        "tarihinden itibaren yapılabilir. Görüşmek üzere!"
    )
    expect(page.locator("#preview-sms")).to_contain_text("UCS-2")
    expect(page.locator("#preview-ucs2")).to_be_visible()
    expect(page.locator("#preview-ucs2-chars")).to_contain_text("ı")
    page.get_by_label("Patient (external id; empty for the sample patient)").fill("P-2000")
    expect(page.locator("#preview-for")).to_have_text("Mehmet Çelik")
    expect(page.locator("#preview-text")).to_contain_text("Mehmet, tedaviniz")
    shot(page, "03-template-editor-preview")
    text.fill("{{ patient.given_name }}, randevu zamani geldi. STOP ile cikabilirsiniz.")
    expect(page.locator("#preview-sms")).to_contain_text("GSM-7")
    expect(page.locator("#preview-ucs2")).to_be_hidden()
    page.get_by_role("button", name="Save as a new version").click()
    expect(page.locator("#saved-message")).to_contain_text("Saved as version 1")
    expect(page.get_by_role("cell", name="v1 (in use)")).to_be_visible()
    shot(page, "04-template-saved")


def test_a_template_with_an_unknown_variable_is_refused_with_its_line(page) -> None:
    sign_in(page, "staff@example.com")
    page.goto("/admin/templates/upcoming/email/en")
    page.get_by_label("Text", exact=True).fill(
        "Dear {{ patient.given_name }},\n\n{{ patient.age }}"
    )
    expect(page.locator("#preview-error")).to_contain_text("text, line 3: unknown variable")
    page.get_by_role("button", name="Save as a new version").click()
    errors = page.locator("#template-errors")
    expect(errors).to_contain_text("text, line 3")
    expect(errors).to_contain_text("unknown variable 'patient.age'")
    expect(page.get_by_label("Text", exact=True)).to_have_value(re.compile(r"patient\.age"))
    shot(page, "05-template-refused")


def test_an_older_version_is_restored(page) -> None:
    sign_in(page, "staff@example.com")
    page.goto("/admin/templates/last_call/sms/en")
    for words in (
        "First wording for {{ patient.given_name }}",
        "Second wording for {{ patient.given_name }}",
    ):
        page.get_by_label("Text", exact=True).fill(words)
        page.get_by_role("button", name="Save as a new version").click()
        expect(page.locator("#saved-message")).to_be_visible()
    page.get_by_role("button", name="Restore version 1").click()
    expect(page.locator("#saved-message")).to_contain_text("Saved as version 3")
    expect(page.get_by_label("Text", exact=True)).to_have_value(
        "First wording for {{ patient.given_name }}"
    )
    shot(page, "06-template-restored")


def test_finding_a_patient_by_name_or_phone_and_opening_their_page(page) -> None:
    sign_in(page, "staff@example.com")
    page.goto("/admin/patients")
    page.get_by_label("Name, phone, email or external id").fill("yıl")
    page.get_by_role("button", name="Search").click()
    results = page.locator("#patient-results")
    expect(results).to_contain_text("Yılmaz, Ayşe")
    shot(page, "07-patient-search")
    page.get_by_label("Name, phone, email or external id").fill("0543 197 40 01")
    page.get_by_role("button", name="Search").click()
    results.get_by_role("link", name="Yılmaz, Ayşe").click()
    expect(page.get_by_role("heading", name=re.compile("Ayşe Yılmaz"))).to_be_visible()
    expect(page.locator("figure.timeline svg")).to_have_count(1)
    expect(page.locator("#reminders")).to_contain_text("last_call")
    page.get_by_label("Channel", exact=True).select_option("sms")
    page.get_by_label("Record", exact=True).select_option("opt_out")
    page.get_by_label("Reason (needed for an opt-out)").fill("asked at the desk")
    page.get_by_role("button", name="Record").click()
    expect(page.locator("#consents")).to_contain_text("asked at the desk")
    shot(page, "08-patient-page")


def test_the_dashboard_draws_sends_delivery_rate_and_adherence(page) -> None:
    sign_in(page)
    expect(page.locator("svg.chart")).to_have_count(3)
    expect(page.locator("#sends-table")).to_contain_text("SMS")
    expect(page.locator("#adherence-table")).to_contain_text("chronic_migraine")
    expect(page.locator("svg.chart polyline").first).to_be_visible()
    shot(page, "09-dashboard")


PAGES = [
    ("10-tr-dashboard", "/admin/dashboard"),
    ("11-tr-templates", "/admin/templates"),
    ("12-tr-template-email", "/admin/templates/due/email/tr"),
    ("13-tr-template-whatsapp", "/admin/templates/due/whatsapp/tr"),
    ("14-tr-patients", "/admin/patients?q=P-"),
    ("15-tr-outbox", "/admin/outbox"),
    ("16-tr-tomorrow", "/admin/outbox/tomorrow"),
    ("17-tr-protocols", "/admin/protocols"),
    ("18-tr-protocol", "/admin/protocols/bladder_dysfunction"),
    ("19-tr-users", "/admin/users"),
]


def test_every_page_reads_in_turkish_and_fits_a_tablet(browser, base_url) -> None:
    context = browser.new_context(base_url=base_url, viewport={"width": 768, "height": 1024})
    context.set_default_timeout(10_000)
    tab = context.new_page()
    sign_in(tab)
    tab.get_by_label("Language").select_option("tr")
    tab.get_by_role("button", name="Change").click()
    expect(tab.get_by_role("heading", name="Pano")).to_be_visible()
    for name, path in PAGES:
        tab.goto(path)
        expect(tab.locator("nav[aria-label='Bölümler']")).to_be_visible()
        assert tab.locator("html").get_attribute("lang") == "tr"
        overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a tablet"
        shot(tab, name)
    context.close()
