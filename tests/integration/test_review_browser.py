"""The review console in a real browser: Debian's Chromium, driven by Playwright.

Playwright never downloads a browser here (``playwright install`` is never run): it starts
``/usr/bin/chromium``, which ``make test`` installs with apt. A missing Chromium fails the
test rather than skipping it, so a green run always means a browser ran.

The queues behind the console come from the ``console_backend`` fixture, one variant per
entry of ``BACKENDS``: the in-memory fake here; a variant on the real broker
(``review/assemble.py``) adds an entry that puts items on the reviews topic and reads the
decision records back. The page-driving steps (:func:`login`, :func:`open_queue`,
:func:`decide_by_key`) are plain functions, for such variants to reuse.

Screenshots go to ``ESCALATOR_ARTEFACTS_DIR`` (default: the test's tmp dir); with
``ESCALATOR_UPDATE_SCREENSHOTS=1`` the item page is also copied to ``docs/review-console.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from playwright.async_api import Browser, Page, async_playwright

from escalator.calibration.decisions_log import read_topic
from escalator.config import Settings, load_settings
from escalator.contract.reviews import Queue, ReviewItem, review_item_value
from escalator.kafka.clients import read_to_end
from escalator.observability.metrics import Metrics
from escalator.review.assemble import build_console
from escalator.review.auth import Authenticator, hash_secret
from escalator.review.handler import ReviewHandler
from escalator.review.queues import ReviewQueues
from escalator.review.web import ReviewConsole
from tests.conftest import repo_root
from tests.integration.harness import make_env, setup_topics
from tests.unit.review.fakes import FakeReviewQueues, Recorded, make_item

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying hosts this closed network
# refuses; --no-sandbox because the tests run as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REVIEWER, PASSWORD = "ana", "correct horse battery staple"
LABELS = ("safe", "unsafe", "review-needed")
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
TEXT = (
    "I ordered the blender three weeks ago and it broke on day two.\n"
    "If I don't get my refund by Friday I will come down to your shop and make sure "
    "everyone there knows exactly what kind of people you are."
)


class ConsoleBackend(Protocol):
    """Queues for the console, and what they recorded."""

    queues: ReviewQueues

    async def put(self, item: ReviewItem) -> None:
        """Make ``item`` leasable (returns once ``lease`` can give it out)."""
        ...

    async def decided(self) -> list[Recorded]:
        """Every decision recorded so far, in order."""
        ...


@dataclass
class MemoryBackend:
    queues: FakeReviewQueues

    async def put(self, item: ReviewItem) -> None:
        self.queues.put(item)

    async def decided(self) -> list[Recorded]:
        return list(self.queues.decisions)


@contextlib.asynccontextmanager
async def memory_backend() -> AsyncIterator[ConsoleBackend]:
    yield MemoryBackend(FakeReviewQueues())


@dataclass
class KafkaBackend:
    """The real queues (review/assemble.py) on the test broker: an item is put on the
    reviews topic, and a decision counts once its records are on the decisions topic and,
    for the reviews queue, the results topic."""

    queues: ReviewHandler
    settings: Settings
    producer: AIOKafkaProducer

    async def put(self, item: ReviewItem) -> None:
        topic = self.settings.topics.reviews
        await self.producer.send_and_wait(topic, review_item_value(item), key=b"k")
        await wait_for(self._holds(item), timeout_s=60)

    def _holds(self, item: ReviewItem) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return item in self.queues.waiting(item.queue)

        return check

    async def decided(self) -> list[Recorded]:
        topics = self.settings.topics
        results = {}
        async for record in read_to_end(self.settings.kafka, topics.results):
            result = orjson.loads(record.value or b"")
            results[result["id"]] = result
        out = []
        for d in await read_topic(self.settings.kafka, topics.decisions):
            review = d.review
            if d.outcome != "human" or review is None:
                continue
            if review.queue == "review":
                result = results.get(d.id)
                if result is None:
                    continue  # not acknowledged on both topics yet
                assert (result["tier"], result["reviewer"]) == ("human", review.reviewer)
                assert result["label"] == d.gold_label
            out.append(Recorded(review.review_id, review.reviewer, d.gold_label, review.note))
        return out


@contextlib.asynccontextmanager
async def kafka_backend(where: tuple[str, str]) -> AsyncIterator[ConsoleBackend]:
    bootstrap, unique = where
    env = make_env(bootstrap, "http://127.0.0.1:9", unique)
    settings = load_settings(env)
    await setup_topics(settings)
    console = build_console(settings, Metrics())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        async with console.service as service:
            await asyncio.wait_for(service.wait_joined(), 60)
            yield KafkaBackend(console.queues, settings, producer)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def memory(where: tuple[str, str]) -> AsyncIterator[ConsoleBackend]:
    async with memory_backend() as backend:
        yield backend


BACKENDS: dict[
    str,
    Callable[[tuple[str, str]], contextlib.AbstractAsyncContextManager[ConsoleBackend]],
] = {
    "memory": memory,
    "kafka": kafka_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, tuple[str, str]]:
    # Synchronous on purpose: the broker fixture starts Kafka with asyncio.run, which cannot
    # run inside the async fixture's loop. The memory backend never starts a broker.
    if request.param == "kafka":
        where = (request.getfixturevalue("kafka_bootstrap"), request.getfixturevalue("unique"))
    else:
        where = ("", "")
    return request.param, where


@pytest.fixture
async def console_backend(
    backend_kind: tuple[str, tuple[str, str]],
) -> AsyncIterator[ConsoleBackend]:
    kind, where = backend_kind
    async with BACKENDS[kind](where) as backend:
        yield backend


@pytest.fixture
async def console(console_backend: ConsoleBackend) -> AsyncIterator[ReviewConsole]:
    auth = Authenticator("password", {REVIEWER: hash_secret("password", PASSWORD)})
    async with ReviewConsole(
        console_backend.queues, auth, host="127.0.0.1", port=0, secure_cookies=False
    ) as server:
        yield server


@pytest.fixture
def chromium() -> Path:
    # Fail, not skip: `make test` installs it, so a missing browser is a broken set-up.
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make tools` (Debian package chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1000, "height": 720})
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    where = os.environ.get("ESCALATOR_ARTEFACTS_DIR")
    path = Path(where) if where else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- steps a person takes ------------------------------------------------------------------


async def login(page: Page, base_url: str, reviewer: str, password: str) -> None:
    """Sign in on the form; ends on the queue list."""
    await page.goto(base_url + "/login")
    await page.fill('input[name="reviewer"]', reviewer)
    await page.fill('input[name="secret"]', password)
    async with page.expect_navigation():
        await page.click('button[type="submit"]')
    assert await page.inner_text("h1") == "Review queues"


async def open_queue(page: Page, queue: Queue) -> None:
    """Follow the queue's link from the queue list; ends on its next item (or 'nothing')."""
    async with page.expect_navigation():
        await page.click(f'a[href="/queue/{queue}"]')
    await page.wait_for_selector("#request-text, p.empty")


async def decide_by_key(page: Page, key: str) -> None:
    """Press a number key on an item page; ends on the page that follows the decision."""
    async with page.expect_navigation():
        await page.keyboard.press(key)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    """Poll ``check`` until it holds: a real backend records decisions asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.05)


# -- the tests -----------------------------------------------------------------------------


async def test_a_reviewer_decides_with_a_number_key(
    console: ReviewConsole, console_backend: ConsoleBackend, page: Page, artefacts: Path
) -> None:
    """Sign in, open the queue, type a note with digits (no submit), press 2: recorded."""
    await console_backend.put(make_item("req-1", TEXT, labels=LABELS))
    await console_backend.put(make_item("req-2", "the next one", labels=LABELS))
    await login(page, console.url, REVIEWER, PASSWORD)
    await open_queue(page, "review")
    assert await page.inner_text("#request-text") == TEXT
    assert await page.locator(".answer h3").all_inner_texts() == ["Answer A", "Answer B"]
    await page.fill("textarea[name=note]", "")
    await page.locator("textarea[name=note]").press_sequentially("threat, 3 of 5 agree")
    assert await console_backend.decided() == []
    assert page.url.endswith("/queue/review")
    await page.screenshot(path=str(artefacts / "review-console.png"), full_page=True)
    if os.environ.get("ESCALATOR_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(artefacts / "review-console.png", repo_root() / "docs/review-console.png")
    await page.locator("h1").click()  # out of the note: keys pick labels again
    await decide_by_key(page, "2")
    assert "outcome=done" in page.url
    assert "Decision recorded." in await page.inner_text("p.notice")
    assert await page.inner_text("#request-text") == "the next one"
    await wait_for(lambda: _count(console_backend, 1))
    assert await console_backend.decided() == [
        Recorded("review:req-1", REVIEWER, "unsafe", "threat, 3 of 5 agree")
    ]


async def _count(backend: ConsoleBackend, n: int) -> bool:
    return len(await backend.decided()) >= n


async def test_a_hostile_text_shows_literally_and_runs_nothing(
    console: ReviewConsole, console_backend: ConsoleBackend, page: Page
) -> None:
    """Markup in a request text is shown as text: no element is made, no script runs."""
    await console_backend.put(make_item("req-h", HOSTILE, labels=LABELS))
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text))
    await login(page, console.url, REVIEWER, PASSWORD)
    await open_queue(page, "review")
    assert await page.inner_text("#request-text") == HOSTILE
    assert await page.locator("#request-text *").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    # Nothing was even attempted: the CSP reports no blocked inline script or handler.
    assert not [v for v in violations if "Content Security Policy" in v]


async def test_requests_without_credentials_get_401(console: ReviewConsole, page: Page) -> None:
    """A page or a fetch without a session is refused; the page offers the login form."""
    response = await page.goto(console.url + "/queue/review")
    assert response is not None and response.status == 401
    assert await page.get_attribute("a[href='/login']", "href") == "/login"
    status = await page.evaluate("fetch('/', {credentials: 'omit'}).then(r => r.status)")
    assert status == 401
    await login(page, console.url, REVIEWER, PASSWORD)
    assert await page.evaluate("fetch('/').then(r => r.status)") == 200
    assert await page.evaluate("fetch('/', {credentials: 'omit'}).then(r => r.status)") == 401


ATTACK = """<!doctype html><html><body>
<form id="f" method="post" action="{action}">
<input type="hidden" name="lease" value="{lease}"><input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="label" value="safe"></form>
<script>document.getElementById("f").submit();</script></body></html>"""


@pytest.mark.parametrize(("attacker_host", "status"), [("127.0.0.1", 403), ("localhost", 401)])
async def test_a_cross_site_form_post_is_refused_and_changes_nothing(
    console: ReviewConsole,
    console_backend: ConsoleBackend,
    page: Page,
    attacker_host: str,
    status: int,
) -> None:
    """A page on another origin auto-submits a decision, even with the real lease and CSRF
    token: refused (same site, other port: the origin check, 403; another site: the
    SameSite=Strict cookie is not sent, 401), and nothing is recorded."""
    await console_backend.put(make_item("req-x", TEXT, labels=LABELS))
    await login(page, console.url, REVIEWER, PASSWORD)
    await open_queue(page, "review")
    lease = await page.get_attribute('form.decide input[name="lease"]', "value")
    csrf = await page.get_attribute('form.decide input[name="csrf"]', "value")
    body = ATTACK.format(action=console.url + "/queue/review/decide", lease=lease, csrf=csrf)

    async def attack(_: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", attack)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with page.expect_response(lambda r: r.url.endswith("/decide")) as refused:
            await page.goto(f"http://{attacker_host}:{port}/")
        assert (await refused.value).status == status
    finally:
        await runner.cleanup()
    assert await console_backend.decided() == []
    # The reviewer's own lease is untouched: deciding it from the console still works.
    await page.goto(console.url + "/queue/review")
    await decide_by_key(page, "1")
    await wait_for(lambda: _count(console_backend, 1))
    assert [(d.reviewer, d.label) for d in await console_backend.decided()] == [(REVIEWER, "safe")]
