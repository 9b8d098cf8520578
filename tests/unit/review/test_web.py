"""The review console over HTTP: sign-in, CSRF, headers, escaping, and who decided what.

Each test drives the real aiohttp application (``make_app``) through aiohttp's test client,
against the strict in-memory queues of ``tests.unit.review.fakes``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from escalator.contract.reviews import REVIEW_REASONS
from escalator.review import pages
from escalator.review.auth import Authenticator, hash_secret, load_authenticator
from escalator.review.web import ReviewConsole, make_app
from tests.unit.review.fakes import FakeReviewQueues, make_item

TOKENS = {"ana": "ana-token-0123456789", "bob": "bob-token-0123456789"}
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"


@dataclass
class Observed:
    decisions: list[tuple[str, str, float | None, str]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    skips: list[tuple[str, str]] = field(default_factory=list)

    def on_login(self, outcome: str) -> None:
        self.logins.append(outcome)

    def on_decision(self, queue: str, reviewer: str, seconds: float | None, outcome: str) -> None:
        self.decisions.append((queue, reviewer, seconds, outcome))

    def on_skip(self, queue: str, reviewer: str) -> None:
        self.skips.append((queue, reviewer))


def token_auth() -> Authenticator:
    return Authenticator("token", {r: hash_secret("token", t) for r, t in TOKENS.items()})


@dataclass
class Console:
    queues: FakeReviewQueues
    observed: Observed
    client: TestClient  # type: ignore[type-arg]

    @property
    def origin(self) -> str:
        return str(self.client.make_url("/")).rstrip("/")

    async def login(
        self, reviewer: str = "ana", secret: str | None = None
    ) -> aiohttp.ClientResponse:
        return await self.client.post(
            "/login",
            data={"reviewer": reviewer, "secret": TOKENS[reviewer] if secret is None else secret},
            headers={"Origin": self.origin},
            allow_redirects=False,
        )

    async def page(self, path: str) -> str:
        response = await self.client.get(path)
        assert response.status == 200, (path, response.status)
        return await response.text()

    async def post(
        self, path: str, data: dict[str, str], headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        return await self.client.post(
            path,
            data=data,
            headers={"Origin": self.origin} if headers is None else headers,
            allow_redirects=False,
        )


def field_of(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, f"no {name} field"
    return found.group(1)


async def open_console(auth: Authenticator, queues: FakeReviewQueues, **kwargs: object) -> Console:
    observed = Observed()
    app = make_app(
        queues,
        auth,
        observer=observed,
        failed_login_delay_s=0.0,
        **kwargs,  # type: ignore[arg-type]
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    return Console(queues, observed, client)


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    queues = FakeReviewQueues()
    queues.put(make_item("r-1", "first text", created_ms=1_000))
    queues.put(make_item("r-2", "second text", created_ms=2_000))
    c = await open_console(token_auth(), queues, secure_cookies=False)
    try:
        yield c
    finally:
        await c.client.close()


async def signed_in(console: Console, reviewer: str = "ana") -> None:
    assert (await console.login(reviewer)).status == 303


async def test_nothing_is_served_without_credentials(console: Console) -> None:
    """Every page and every POST answers 401 (with a link to sign in); only login is open."""
    for path in ("/", "/queue/review", "/queue/adjudication", "/queue/nope", "/elsewhere"):
        response = await console.client.get(path)
        assert response.status == 401, path
        assert 'href="/login"' in await response.text()
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/queue/review/decide", "/queue/review/skip", "/logout"):
        response = await console.post(path, {"lease": "x", "label": "safe", "csrf": "x"})
        assert response.status == 401, path
    for path in ("/login", "/static/console.css", "/static/console.js"):
        assert (await console.client.get(path)).status == 200, path
    assert console.queues.calls == [] and console.queues.decisions == []


@pytest.mark.parametrize("kind", ["token", "password"])
async def test_login_works_with_each_kind_of_file(tmp_path: Path, kind: str) -> None:
    """A reviewer listed in a tokens file, or a passwords file, signs in and sees the queues."""
    path = tmp_path / "reviewers"
    path.write_text(f"# test\nana:{hash_secret(kind, 's3cret-value')}\n")  # type: ignore[arg-type]
    auth = load_authenticator(
        path if kind == "token" else None, path if kind == "password" else None
    )
    c = await open_console(auth, FakeReviewQueues(), secure_cookies=False)
    try:
        response = await c.login("ana", "s3cret-value")
        assert response.status == 303 and response.headers["Location"] == "/"
        page = await c.page("/")
        assert "Signed in as ana" in page and 'href="/queue/review"' in page
        assert c.observed.logins == ["ok"]
    finally:
        await c.client.close()


async def test_the_session_cookie_is_httponly_strict_and_secure_when_asked() -> None:
    """Without TLS: HttpOnly, SameSite=Strict; with secure_cookies also Secure and __Host-."""
    for secure in (False, True):
        c = await open_console(token_auth(), FakeReviewQueues(), secure_cookies=secure)
        try:
            cookie = (await c.login()).headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            assert ("Secure" in cookie) is secure
            assert cookie.startswith("__Host-escalator-review=" if secure else "escalator-review=")
        finally:
            await c.client.close()


async def test_a_wrong_secret_is_refused_and_repeated_failures_are_throttled(
    console: Console,
) -> None:
    """Wrong secrets get 401 and no session; after five, even the right one waits (429)."""
    for _ in range(5):
        response = await console.login("ana", "wrong")
        assert response.status == 401 and "Set-Cookie" not in response.headers
    assert (await console.login("ana")).status == 429
    assert (await console.client.get("/")).status == 401
    assert console.observed.logins == ["failed"] * 5 + ["throttled"]
    # Behind an ingress every reviewer has the same address: bob is not locked out by ana.
    assert (await console.login("bob")).status == 303


async def test_a_token_of_another_reviewer_does_not_sign_in(console: Console) -> None:
    """Bob's token is not Ana's password: the pair must match."""
    assert (await console.login("ana", TOKENS["bob"])).status == 401


async def test_a_cross_site_login_is_refused(console: Console) -> None:
    """Login CSRF: a form on another origin cannot sign the browser in."""
    response = await console.client.post(
        "/login",
        data={"reviewer": "ana", "secret": TOKENS["ana"]},
        headers={"Origin": "http://127.0.0.1:1"},
        allow_redirects=False,
    )
    assert response.status == 403 and "Set-Cookie" not in response.headers


@pytest.mark.parametrize("csrf", [None, "", "wrong-token"])
async def test_a_decision_without_the_right_csrf_token_is_refused(
    console: Console, csrf: str | None
) -> None:
    """Missing or wrong CSRF token: 403, and the queues never see a decision."""
    await signed_in(console)
    lease = field_of(await console.page("/queue/review"), "lease")
    data = {"lease": lease, "label": "safe"}
    if csrf is not None:
        data["csrf"] = csrf
    assert (await console.post("/queue/review/decide", data)).status == 403
    assert (await console.post("/queue/review/skip", data)).status == 403
    assert console.queues.decisions == []
    assert not [c for c in console.queues.calls if c[0] in ("decide", "release")]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/form.html"},
        {},
    ],
)
async def test_a_post_from_another_origin_is_refused_even_with_the_token(
    console: Console, headers: dict[str, str]
) -> None:
    """The origin check stands on its own: a leaked CSRF token is not enough."""
    await signed_in(console)
    page = await console.page("/queue/review")
    data = {"lease": field_of(page, "lease"), "csrf": field_of(page, "csrf"), "label": "safe"}
    assert (await console.post("/queue/review/decide", data, headers)).status == 403
    assert (await console.post("/logout", {"csrf": data["csrf"]}, headers)).status == 403
    assert console.queues.decisions == []
    assert (await console.client.get("/")).status == 200


async def test_a_same_origin_referer_is_enough_without_origin(console: Console) -> None:
    """Browsers that omit Origin still send a same-origin Referer (Referrer-Policy)."""
    await signed_in(console)
    page = await console.page("/queue/review")
    data = {"lease": field_of(page, "lease"), "csrf": field_of(page, "csrf"), "label": "safe"}
    headers = {"Referer": console.origin + "/queue/review"}
    assert (await console.post("/queue/review/decide", data, headers)).status == 303
    assert len(console.queues.decisions) == 1


def directives(csp: str) -> dict[str, list[str]]:
    parts = (d.split() for d in csp.split(";") if d.strip())
    return {p[0]: p[1:] for p in parts}


async def test_every_response_carries_a_strict_csp_and_the_other_headers(
    console: Console,
) -> None:
    """CSP allows only this origin's files (no inline anything); nosniff; no-store on pages."""
    anonymous = [await console.client.get(p) for p in ("/login", "/", "/static/console.js")]
    await signed_in(console)
    page = await console.page("/queue/review")
    refused = await console.post("/queue/review/decide", {"lease": "x", "label": "safe"})
    signed = [await console.client.get(p) for p in ("/", "/queue/review", "/queue/nope")]
    for response in [*anonymous, refused, *signed]:
        csp = directives(response.headers["Content-Security-Policy"])
        assert csp["default-src"] == ["'none'"]
        assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
        assert csp["form-action"] == ["'self'"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        if not response.url.path.startswith("/static/"):
            assert response.headers["Cache-Control"] == "no-store", response.url
    # nosniff makes the browser run the script only under a JavaScript type.
    assert anonymous[2].content_type in ("text/javascript", "application/javascript")
    # And the pages obey it: no inline script, style or handler to be blocked.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert not re.search(r"\son\w+=|\sstyle=", page)


async def test_hostile_texts_are_escaped_wherever_they_appear() -> None:
    """Request text, id, reason and labels reach the page as text, never as markup."""
    queues = FakeReviewQueues()
    queues.put(
        make_item(
            "<b>id</b>",
            HOSTILE,
            reason="<i>why</i>",
            labels=("<u>a</u>", 'b" onclick="x'),
            cheap=("<u>a</u>", 0.5),
            strong=('b" onclick="x', 0.6),
        )
    )
    c = await open_console(token_auth(), queues, secure_cookies=False)
    try:
        await signed_in(c)
        page = await c.page("/queue/review")
    finally:
        await c.client.close()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&quot;&#x27;&amp;" in page
    for raw in ("<script>alert", "<img", "<b>id", "<i>why", "<u>a", 'b" onclick'):
        assert raw not in page, raw
    assert 'value="b&quot; onclick=&quot;x"' in page


async def test_answers_are_blind_and_in_the_lease_order(console: Console) -> None:
    """Answer A and B follow the lease's order; no model or tier name is shown."""
    await signed_in(console)
    page = await console.page("/queue/review")
    lease = console.queues.lease("review", "ana")
    assert lease is not None
    first = (lease.item.cheap, lease.item.strong)[lease.order[0]]
    a = page.index("Answer A")
    assert page.index(f"{first.label}</span>", a) < page.index("Answer B")
    assert f"confidence {first.confidence:.2f}" in page
    for name in ("haiku", "sonnet", "claude"):
        assert name not in page.lower(), name
    visible = re.sub(r"<[^>]+>", " ", page).lower()
    assert "cheap" not in visible and "strong" not in visible


def test_every_review_reason_has_words_that_name_no_tier() -> None:
    """The reason shown must not tell which answer came from which model."""
    assert set(pages.REASON_TEXT) == set(REVIEW_REASONS)
    for text in pages.REASON_TEXT.values():
        assert not re.search(r"cheap|strong|haiku|sonnet", text), text


async def test_keys_are_numbered_labels_and_neither(console: Console) -> None:
    """Labels are buttons with keys 1..n, and "neither" has key 0."""
    await signed_in(console)
    page = await console.page("/queue/review")
    assert re.search(r'name="label" value="safe" class="pick" data-key="1"', page)
    assert re.search(r'name="label" value="unsafe" class="pick" data-key="2"', page)
    assert 'name="neither" value="1" class="pick neither" data-key="0"' in page


async def test_the_decider_is_the_session_reviewer_not_a_form_field(console: Console) -> None:
    """A forged reviewer field is ignored: the decision is recorded for who signed in."""
    await signed_in(console, "ana")
    page = await console.page("/queue/review")
    data = {
        "lease": field_of(page, "lease"),
        "csrf": field_of(page, "csrf"),
        "label": "unsafe",
        "reviewer": "mallory",
        "note": "  looks off  ",
    }
    response = await console.post("/queue/review/decide", data)
    assert response.status == 303 and response.headers["Location"] == "/queue/review?outcome=done"
    [decision] = console.queues.decisions
    assert (decision.review_id, decision.reviewer, decision.label) == (
        "review:r-1",
        "ana",
        "unsafe",
    )
    assert decision.note == "looks off"
    [(queue, reviewer, seconds, outcome)] = console.observed.decisions
    assert (queue, reviewer, outcome) == ("review", "ana", "done")
    assert seconds is not None and seconds >= 0


async def test_after_a_decision_comes_the_next_item_and_a_repeat_counts_once(
    console: Console,
) -> None:
    """Post-redirect-get to the next item; the same decision posted again is "duplicate"."""
    await signed_in(console)
    page = await console.page("/queue/review")
    data = {"lease": field_of(page, "lease"), "csrf": field_of(page, "csrf"), "label": "safe"}
    assert (await console.post("/queue/review/decide", data)).status == 303
    page = await console.page("/queue/review?outcome=done")
    assert "Decision recorded." in page and "second text" in page
    response = await console.post("/queue/review/decide", data)
    assert response.headers["Location"] == "/queue/review?outcome=duplicate"
    assert "the first decision stands and yours was not recorded" in await console.page(
        response.headers["Location"]
    )
    assert len(console.queues.decisions) == 1


async def test_a_pending_decision_says_so_and_shows_the_next_item(console: Console) -> None:
    """A decision the broker has not acknowledged yet: the page says it is not confirmed (not
    recorded, not lost) and goes on to the next item; it is counted as "pending"."""
    await signed_in(console)
    page = await console.page("/queue/review")
    data = {"lease": field_of(page, "lease"), "csrf": field_of(page, "csrf"), "label": "safe"}
    console.queues.unacknowledged = True
    response = await console.post("/queue/review/decide", data)
    assert response.status == 303
    assert response.headers["Location"] == "/queue/review?outcome=pending"
    page = await console.page(response.headers["Location"])
    assert 'class="notice outcome-pending"' in page
    assert "not confirmed yet" in page and "Decision recorded." not in page
    assert "second text" in page
    assert [o for *_, o in console.observed.decisions] == ["pending"]


async def test_neither_and_an_unknown_label(console: Console) -> None:
    """ "neither" decides with no label; a label not of the item is "invalid"."""
    await signed_in(console)
    page = await console.page("/queue/review")
    data = {"lease": field_of(page, "lease"), "csrf": field_of(page, "csrf")}
    response = await console.post("/queue/review/decide", {**data, "label": "maybe"})
    assert response.headers["Location"].endswith("outcome=invalid")
    assert "not one of this item" in await console.page(response.headers["Location"])
    await console.post("/queue/review/decide", {**data, "neither": "1"})
    assert [(d.label, d.reviewer) for d in console.queues.decisions] == [(None, "ana")]


async def test_an_expired_lease_is_reported_lost_and_goes_to_someone_else() -> None:
    """A lease that ran out decides nothing; the item goes to the next reviewer."""
    now = [1000.0]
    queues = FakeReviewQueues(lease_s=60, clock=lambda: now[0])
    queues.put(make_item("r-1", "only text"))
    c = await open_console(token_auth(), queues, secure_cookies=False)
    try:
        await signed_in(c, "ana")
        page = await c.page("/queue/review")
        data = {"lease": field_of(page, "lease"), "csrf": field_of(page, "csrf"), "label": "safe"}
        now[0] += 61
        assert queues.lease("review", "bob") is not None
        response = await c.post("/queue/review/decide", data)
        assert response.headers["Location"].endswith("outcome=lost")
        page = await c.page(response.headers["Location"])
        assert "Your lease expired" in page and "Nothing waiting" in page
        assert queues.decisions == []
    finally:
        await c.client.close()


async def test_two_reviewers_get_different_items(console: Console) -> None:
    """A leased item is not shown to a second reviewer; each keeps their own on reload."""
    other = TestClient(TestServer(console.client.app))  # type: ignore[arg-type]
    await other.start_server()
    try:
        await signed_in(console, "ana")
        ana = field_of(await console.page("/queue/review"), "lease")
        bob_console = Console(console.queues, console.observed, other)
        await signed_in(bob_console, "bob")
        bob_page = await bob_console.page("/queue/review")
        assert field_of(bob_page, "lease") != ana and "second text" in bob_page
        assert field_of(await console.page("/queue/review"), "lease") == ana
        assert "Signed in as bob" in bob_page
    finally:
        await other.close()


async def test_skip_gives_the_item_back(console: Console) -> None:
    """Skipping releases the lease: the item is free for another reviewer, nothing decided."""
    await signed_in(console, "ana")
    page = await console.page("/queue/review")
    data = {"lease": field_of(page, "lease"), "csrf": field_of(page, "csrf")}
    response = await console.post("/queue/review/skip", data)
    assert response.status == 303 and response.headers["Location"] == "/queue/review"
    lease = console.queues.lease("review", "bob")
    assert lease is not None and lease.item.request.id == "r-1"
    assert console.queues.decisions == [] and console.observed.skips == [("review", "ana")]


async def test_the_queue_list_shows_depth_leased_and_age(console: Console) -> None:
    """Each queue's row: waiting items, leased ones, and the oldest item's age."""
    await signed_in(console)
    await console.page("/queue/review")
    page = await console.page("/")
    row = re.search(r'<a href="/queue/review">review</a></td>(.*?)</tr>', page)
    assert row is not None
    cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(1))
    assert cells[:2] == ["2", "1"] and cells[2].endswith(" d")
    assert re.search(
        r'adjudication</a></td><td class="num">0</td><td class="num">0</td>'
        r'<td class="num">-</td>',
        page,
    )


async def test_a_bearer_token_serves_scripts_without_a_session(console: Console) -> None:
    """Scripts sign in by Bearer; no cookie is needed, nor a CSRF token (not ambient)."""
    bearer = {"Authorization": f"Bearer {TOKENS['bob']}"}
    response = await console.client.get("/queue/review", headers=bearer)
    assert response.status == 200
    lease = field_of(await response.text(), "lease")
    response = await console.post("/queue/review/decide", {"lease": lease, "label": "safe"}, bearer)
    assert response.status == 303
    assert [(d.reviewer, d.label) for d in console.queues.decisions] == [("bob", "safe")]
    wrong = {"Authorization": "Bearer not-a-token"}
    assert (await console.client.get("/", headers=wrong)).status == 401


async def test_logout_ends_the_session(console: Console) -> None:
    """After signing out, the same cookie gets 401."""
    await signed_in(console)
    csrf = field_of(await console.page("/"), "csrf")
    cookies = {c.key: c.value for c in console.client.session.cookie_jar}
    response = await console.post("/logout", {"csrf": csrf})
    assert response.status == 303 and response.headers["Location"] == "/login"
    assert (await console.client.get("/", cookies=cookies)).status == 401


async def test_a_session_ends_after_its_lifetime() -> None:
    """Past ``session_s`` the cookie no longer signs in."""
    c = await open_console(token_auth(), FakeReviewQueues(), secure_cookies=False, session_s=0.5)
    try:
        await signed_in(c)
        assert (await c.client.get("/")).status == 200
        await asyncio.sleep(0.6)
        assert (await c.client.get("/")).status == 401
    finally:
        await c.client.close()


async def test_an_unknown_queue_is_404_once_signed_in(console: Console) -> None:
    """Only the two queues exist."""
    await signed_in(console)
    assert (await console.client.get("/queue/elsewhere")).status == 404


async def test_review_console_listens_on_an_ephemeral_port() -> None:
    """Port 0 picks a free port, reported as ``port`` and ``url``; the server answers there."""
    async with ReviewConsole(
        FakeReviewQueues(), token_auth(), host="127.0.0.1", port=0, secure_cookies=False
    ) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session, session.get(server.url + "/") as response:
            assert response.status == 401
