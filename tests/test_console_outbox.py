"""The outbox read a page at a time by keyset: every row once and in order, forwards and
back, ties on the instant settled by id, filters kept across pages, a bad page link refused
with a message, one bounded query per page that the indexes of the reminders serve."""

# ruff: noqa: F811  (fixtures imported from tests.console_support are used as arguments)

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from html import unescape
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, select

from reminders.models import Reminder
from reminders.queries import of_patient
from reminders.runtime import Runtime
from reminders.web.console.outbox import VIEWS, Cursor, Filters, Window, page
from tests import factories
from tests.console_support import console, post, staff  # noqa: F401

ZONE = ZoneInfo("Europe/Istanbul")
_NEXT = re.compile(r'<a href="([^"]+)" rel="next">')
_PREV = re.compile(r'<a href="([^"]+)" rel="prev">')
_FIRST = re.compile(r'<a href="([^"]+)" id="outbox-first">')
_ROW = re.compile(r'aria-label="(?:Retry|Cancel) reminder (\d+)"')


def _add(runtime: Runtime, now: dt.datetime, specs: list[dict[str, Any]]) -> list[int]:
    """One reminder per spec (status, due and next attempt in hours from now, channel, step),
    each on a treatment of its own, the protocols taking turns."""
    with runtime.sessions() as session, session.begin():
        patient = factories.patient(session, given_name="Deniz", family_name="Aydın")
        treatments = [
            factories.treatment(
                session,
                patient,
                now.date() - dt.timedelta(days=90 + i),
                needs_plan=False,
                protocol=protocol,
            )
            for i, protocol in enumerate(
                ["chronic_migraine", "bladder_dysfunction"][n % 2] for n in range(len(specs))
            )
        ]
        rows = []
        for n, spec in enumerate(specs):
            treatment = treatments[n]
            due = now + dt.timedelta(hours=spec.get("due", 0))
            row = Reminder(
                treatment_id=treatment.id,
                patient_id=patient.id,
                protocol=treatment.protocol,
                step=spec.get("step", f"s{n:04d}"),
                status=spec.get("status", "sent"),
                due_at=due,
                expires_at=due + dt.timedelta(days=7),
                next_attempt_at=now + dt.timedelta(hours=spec.get("next", spec.get("due", 0))),
                channel=spec.get("channel"),
            )
            session.add(row)
            rows.append(row)
        session.flush()
        return [r.id for r in rows]


def _expected(runtime: Runtime, filters: Filters) -> list[int]:
    """The view's ids in display order, worked out in Python from every row."""
    statuses = VIEWS[filters.view]
    with runtime.sessions() as session:
        rows = [r for r in session.query(Reminder).all() if r.status in statuses]
    rows = [
        r
        for r in rows
        if (not filters.channel or r.channel == filters.channel)
        and (not filters.protocol or r.protocol == filters.protocol)
        and (not filters.step or r.step == filters.step)
        and (not filters.since or r.due_at.astimezone(ZONE).date() >= filters.since)
        and (not filters.until or r.due_at.astimezone(ZONE).date() <= filters.until)
    ]
    if filters.view == "upcoming":
        rows.sort(key=lambda r: (r.next_attempt_at, r.id))
    else:
        rows.sort(key=lambda r: (r.due_at, r.id), reverse=True)
    return [r.id for r in rows]


def _walk(runtime: Runtime, filters: Filters, size: int) -> list[Window]:
    pages: list[Window] = []
    after = None
    with runtime.sessions() as session:
        while True:
            window = page(session, filters, ZONE, after=after, size=size)
            pages.append(window)
            if window.next is None:
                return pages
            assert len(pages) < 100, "the walk does not end"
            after = window.next


def _ids(window: Window) -> list[int]:
    return [row[0].id for row in window.rows]


def _flat(pages: list[Window]) -> list[int]:
    return [i for p in pages for i in _ids(p)]


# --- the keyset, straight on the database ------------------------------------------------------


def test_walking_a_view_forwards_then_back_shows_every_row_once_in_order(console, now) -> None:
    # ties: four reminders per instant, so pages of three split them
    specs = [{"status": "sent", "due": -(n // 4)} for n in range(22)]
    specs += [{"status": "failed", "due": -1}]  # another view
    _add(console, now, specs)
    filters = Filters("sent")
    pages = _walk(console, filters, 3)
    assert _ids(pages[0]) == _expected(console, filters)[:3]
    assert _flat(pages) == _expected(console, filters)
    assert [len(p.rows) for p in pages] == [3] * 7 + [1]
    assert pages[0].first and pages[0].previous is None
    assert all(not p.first and p.previous is not None for p in pages[1:])
    # back from the last page: the same pages, the first one whole again
    with console.sessions() as session:
        before, back = pages[-1].previous, []
        while before is not None:
            window = page(session, filters, ZONE, before=before, size=3)
            back.append(_ids(window))
            before = window.previous
    assert back == [_ids(p) for p in reversed(pages[:-1])]
    assert window.first


def test_the_upcoming_view_runs_in_send_order_over_pending_and_claimed(console, now) -> None:
    specs = [
        {"status": status, "due": 24, "next": n // 3}
        for n, status in enumerate(["pending", "claimed", "pending", "in_doubt", "sent"] * 4)
    ]
    _add(console, now, specs)
    filters = Filters("upcoming")
    pages = _walk(console, filters, 4)
    expected = _expected(console, filters)
    assert len(expected) == 12
    assert _flat(pages) == expected
    with console.sessions() as session:
        last = page(session, filters, ZONE, after=pages[1].next, size=4)
        assert _ids(last) == expected[8:] and last.next is None


@pytest.mark.parametrize(
    "filters",
    [
        Filters("sent", channel="sms"),
        Filters("sent", protocol="bladder_dysfunction", step="due"),
        Filters("sent", since=dt.date(2026, 3, 2), until=dt.date(2026, 3, 3)),
        Filters("upcoming", step="due", since=dt.date(2026, 3, 5)),
    ],
    ids=["channel", "protocol-step", "since-until", "upcoming-step-since"],
)
def test_filters_hold_on_every_page(console, now, filters: Filters) -> None:
    specs = [
        {
            "status": "sent" if n % 5 else "pending",
            "due": 150 - 3 * n,
            "channel": ("sms", "email", "whatsapp")[n % 3],
            "step": "due" if n % 4 < 2 else "last_call",
        }
        for n in range(60)
    ]
    _add(console, now, specs)
    expected = _expected(console, filters)
    assert len(expected) > 4, "the case needs more than one page"
    assert _flat(_walk(console, filters, 2)) == expected


def test_a_page_cursor_reads_back_as_written() -> None:
    at = dt.datetime(2026, 3, 4, 7, 0, 0, 1234, tzinfo=dt.UTC)
    written = str(Cursor(at, 42))
    assert written == "2026-03-04T07:00:00.001234Z,42"
    assert Cursor.parse(written) == Cursor(at, 42)
    assert Cursor.parse("2026-03-04T10:00:00.001234+03:00,42") == Cursor(at, 42)


@pytest.mark.parametrize(
    "raw",
    [
        "x",
        ",",
        "2026-03-04T07:00:00Z",
        "2026-03-04T07:00:00Z,",
        "2026-03-04T07:00:00Z,abc",
        "2026-03-04T07:00:00Z,-1",
        "2026-03-04T07:00:00Z,0",
        "2026-03-04T07:00:00Z,2147483648",  # more than an INTEGER id holds
        "2026-03-04T07:00:00Z,99999999999999999999",
        "0001-01-01T00:00:00+14:00,1",  # before the first instant there is
        "9999-12-31T23:59:59-14:00,1",  # after the last
        "2026-03-04T07:00:00,42",  # no offset
        "2026-02-30T07:00:00Z,42",
        "yesterday,42",
        "2026-03-04T07:00:00Z," + "1" * 80,
        "2026-03-04T07:00:00Z,٤٢",  # digits, but not ASCII ones
    ],
)
def test_a_bad_cursor_is_a_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        Cursor.parse(raw)


# --- over HTTP ---------------------------------------------------------------------------------


def _link(pattern: re.Pattern[str], html: str) -> str | None:
    found = pattern.search(html)
    return unescape(found.group(1)) if found else None


def test_the_page_links_walk_the_view_and_keep_the_filters(staff, console, now) -> None:
    _add(console, now, [{"status": "failed", "due": -n, "channel": "sms"} for n in range(120)])
    _add(console, now, [{"status": "failed", "due": -n, "channel": "email"} for n in range(5)])
    first = staff.get("/admin/outbox?view=failed&channel=sms")
    assert first.status_code == 200
    assert _link(_PREV, first.text) is None and _link(_FIRST, first.text) is None
    assert "Latest due first." in first.text
    expected = _expected(console, Filters("failed", channel="sms"))
    seen, html, links = [], first.text, []
    while True:
        seen += [int(i) for i in _ROW.findall(html)]
        link = _link(_NEXT, html)
        if link is None:
            break
        assert "channel=sms" in link and "view=failed" in link and "after=" in link
        links.append(link)
        html = staff.get(link).text
    assert seen == expected and len(links) == 2  # 50 + 50 + 20
    assert _link(_FIRST, html) == "/admin/outbox?view=failed&channel=sms"
    back = staff.get(_link(_PREV, html) or "")
    assert [int(i) for i in _ROW.findall(back.text)] == expected[50:100]
    assert "before=" in (_link(_PREV, back.text) or "")


def test_a_bad_page_link_is_refused_with_a_message_in_the_viewers_language(staff, console) -> None:
    refused = staff.get("/admin/outbox", params={"view": "sent", "after": "2026-03-04,x"})
    assert refused.status_code == 400
    assert "The page link is not valid (after=2026-03-04,x)" in unescape(refused.text)
    for far in ("2026-03-04T07:00:00Z,2147483648", "9999-12-31T23:59:59-14:00,1"):
        assert staff.get("/admin/outbox", params={"after": far}).status_code == 400
    for edge in ("2026-03-04T07:00:00Z,2147483647", "0001-01-01T00:00:00Z,1"):
        assert (
            staff.get("/admin/outbox", params={"view": "sent", "before": edge}).status_code == 200
        )
        assert staff.get("/admin/outbox", params={"after": edge}).status_code == 200
    both = "2026-03-04T07:00:00Z,1"
    twice = staff.get("/admin/outbox", params={"after": both, "before": both})
    assert twice.status_code == 400 and "either after or before" in twice.text
    turkish = staff.get(
        "/admin/outbox", params={"before": "nope"}, headers={"Accept-Language": "tr"}
    )
    assert turkish.status_code == 400
    assert "Sayfa bağlantısı geçerli değil (before=nope)" in unescape(turkish.text)


def test_retry_from_a_later_page_comes_back_to_that_page(staff, console, now) -> None:
    ids = _add(console, now, [{"status": "failed", "due": -n} for n in range(60)])
    first = staff.get("/admin/outbox?view=failed").text
    later_link = _link(_NEXT, first) or ""
    later = staff.get(later_link).text
    target = int(_ROW.findall(later)[0])
    assert target == ids[50]
    done = post(staff, f"/admin/outbox/{target}/retry", {"back": later_link})
    assert done.status_code == 303
    assert done.headers["location"] == f"{later_link}&done=retried"
    again = staff.get(done.headers["location"])
    assert "The reminder is queued to go out again." in again.text
    assert target not in [int(i) for i in _ROW.findall(again.text)]


@pytest.fixture
def statements(console: Runtime) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(console.engine, "before_cursor_execute", record)
    yield seen
    event.remove(console.engine, "before_cursor_execute", record)


def _reminder_queries(seen: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(s, p) for s, p in seen if "FROM reminders" in s]


@pytest.mark.parametrize("view", ["upcoming", "sent"])
def test_a_page_is_one_bounded_query_that_an_index_serves(
    staff, console, now, statements, view: str
) -> None:
    status = "pending" if view == "upcoming" else "sent"
    _add(console, now, [{"status": status, "due": 60 - n} for n in range(60)])
    first = staff.get(f"/admin/outbox?view={view}")
    statements.clear()
    later = staff.get(_link(_NEXT, first.text) or "")
    assert later.status_code == 200
    queries = _reminder_queries(statements)
    assert len(queries) == 1, [s for s, _ in queries]
    sql, params = queries[0]
    assert "count(" not in sql.lower() and "LIMIT" in sql
    if "OFFSET" in sql:  # SQLAlchemy's SQLite dialect writes one, always 0
        assert sql.endswith("LIMIT ? OFFSET ?") and params[-2:] == (51, 0), (sql, params)
    index = "ix_reminders_upcoming" if view == "upcoming" else "ix_reminders_status_due"
    plan = _plan(console, sql, params)
    assert index in plan, plan
    assert not re.search(r"\bSort\b|TEMP B-TREE", plan), plan


def _plan(runtime: Runtime, sql: str, params: Any) -> str:
    """The query plan of one statement as the app ran it; on PostgreSQL with sequential scans
    and sorts priced out, so a tiny test table still shows whether the index can serve it."""
    with runtime.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
            return "\n".join(str(r[-1]) for r in rows)
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.exec_driver_sql("SET enable_sort = off")
        rows = conn.exec_driver_sql("EXPLAIN " + sql, params).all()
        conn.rollback()
        return "\n".join(str(r[0]) for r in rows)


def test_a_patients_reminders_are_all_found_on_indexes_claimed_ones_too(
    staff, console, now, statements
) -> None:
    """On PostgreSQL ``ix_reminders_patient`` leaves claimed reminders out (a claim writes no
    entry into it): the patient's page still lists every one of theirs, claimed ones found by
    status, with no scan of the table; another patient's are not listed."""
    statuses = ["pending", "claimed", "sent", "in_doubt", "failed", "claimed"]
    mine = _add(
        console, now, [{"status": s, "step": f"mine-{s}-{n}"} for n, s in enumerate(statuses)]
    )
    theirs = _add(
        console, now, [{"status": s, "step": f"theirs-{n}"} for n, s in enumerate(statuses)]
    )
    with console.sessions() as session:
        patient_id = session.get_one(Reminder, mine[0]).patient_id
        found = set(session.scalars(select(Reminder.id).where(of_patient(patient_id))))
    assert found == set(mine) and not found & set(theirs)
    statements.clear()
    page = staff.get(f"/admin/patients/{patient_id}")
    assert page.status_code == 200
    listed = re.findall(r"<td>((?:mine|theirs)-[\w-]+)</td>", page.text)
    assert sorted(listed) == sorted(f"mine-{s}-{n}" for n, s in enumerate(statuses))
    [(sql, params)] = [
        (s, p) for s, p in _reminder_queries(statements) if "patient_id" in s and "OR" in s
    ]
    plan = _plan(console, sql, params)
    assert "ix_reminders_patient" in plan, plan
    if console.engine.dialect.name == "postgresql":  # there the index leaves claimed ones out
        assert "ix_reminders_status_due" in plan, plan
    assert not re.search(r"Seq Scan|\bSCAN reminders\b", plan), plan
