"""The review console: an aiohttp site where people decide the items of the review queues.

Pages: ``/`` (the queues), ``/queue/<queue>`` (the reviewer's next item there), the POSTs
``/queue/<queue>/decide`` and ``/queue/<queue>/skip``, ``/login`` and ``/logout``, and
``/static/`` (the CSS and the keyboard script). HTML is built in ``review/pages.py``.

The defences, all in this module:

1. **Authentication first.** A middleware refuses (401) every path but the login page, its
   POST and ``/static/`` unless the request carries a live session cookie (HttpOnly,
   SameSite=Strict, Secure when ``secure_cookies``) or ``Authorization: Bearer <token>``.
2. **CSRF.** A POST signed in by cookie must carry the session's CSRF token (a hidden field)
   *and* come from this origin (``Origin``, else ``Referer``); otherwise 403 and nothing
   happens. The login POST checks the origin (no session yet). A Bearer request is exempt:
   a browser never attaches that header by itself.
3. **Headers on every response**: a Content-Security-Policy that allows only this origin's
   script and style files (no inline script, style or handler), ``nosniff``,
   ``Referrer-Policy: same-origin``, ``Cache-Control: no-store`` on pages.
4. **Who decided** is the authenticated reviewer, never a form field.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from escalator.contract.reviews import QUEUES, Queue
from escalator.review import pages
from escalator.review.auth import Authenticator, LoginThrottle, Session, Sessions
from escalator.review.queues import Outcome, ReviewQueues

STATIC_DIR = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: A working day; after it the reviewer signs in again.
SESSION_S = 8 * 3600.0
LoginOutcome = Literal["ok", "failed", "throttled"]


class ConsoleObserver(Protocol):
    """What the console reports, for metrics. Callbacks must not block."""

    def on_login(self, outcome: LoginOutcome) -> None: ...

    def on_decision(
        self, queue: Queue, reviewer: str, seconds: float | None, outcome: Outcome
    ) -> None:
        """``seconds``: from the item's first showing to the decision; None without a lease."""
        ...

    def on_skip(self, queue: Queue, reviewer: str) -> None: ...


class NullObserver:
    def on_login(self, outcome: LoginOutcome) -> None:
        pass

    def on_decision(
        self, queue: Queue, reviewer: str, seconds: float | None, outcome: Outcome
    ) -> None:
        pass

    def on_skip(self, queue: Queue, reviewer: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Identity:
    reviewer: str
    #: None when the request signed in with a Bearer token.
    session: Session | None


_IDENTITY = web.RequestKey("escalator_review_identity", Identity)


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def _see_other(location: str) -> web.Response:
    # 303: the browser GETs the next page, so a reload never re-posts a decision.
    return web.Response(status=303, headers={"Location": location})


class _Console:
    def __init__(
        self,
        queues: ReviewQueues,
        auth: Authenticator,
        *,
        secure_cookies: bool,
        observer: ConsoleObserver,
        session_s: float,
        failed_login_delay_s: float,
    ) -> None:
        self.queues = queues
        self.auth = auth
        self.secure = secure_cookies
        self.observer = observer
        self.sessions = Sessions(session_s)
        self.session_s = session_s
        self.throttle = LoginThrottle()
        self.failed_login_delay_s = failed_login_delay_s
        # The __Host- prefix makes the browser refuse the cookie unless Secure, Path=/ and
        # host-only: no sibling domain can plant or read it.
        self.cookie = "__Host-escalator-review" if secure_cookies else "escalator-review"

    # -- identity, origin, CSRF ----------------------------------------------------------

    def identify(self, request: web.Request) -> Identity | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer":
            reviewer = self.auth.bearer(token.strip())
            return None if reviewer is None else Identity(reviewer, None)
        session_id = request.cookies.get(self.cookie)
        session = self.sessions.get(session_id) if session_id else None
        return None if session is None else Identity(session.reviewer, session)

    def same_origin(self, request: web.Request) -> bool:
        """The request comes from a page of this site: ``Origin`` (or ``Referer``) matches."""
        source = request.headers.get("Origin") or request.headers.get("Referer")
        if not source:
            return False
        parsed = urlsplit(source)
        # Behind a TLS proxy (secure_cookies) the browser's origin is https while we see http.
        schemes = {request.scheme, "https"} if self.secure else {request.scheme}
        return parsed.scheme in schemes and parsed.netloc.lower() == request.host.lower()

    @web.middleware
    async def guard(
        self,
        request: web.Request,
        handler: Handler,
    ) -> web.StreamResponse:
        if request.path == "/login" or request.path.startswith("/static/"):
            return await handler(request)
        identity = self.identify(request)
        if identity is None:
            response = _html(pages.unauthorized_page(), status=401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="escalator-review"'
            return response
        if request.method == "POST" and identity.session is not None:
            form = await request.post()
            sent = form.get("csrf")
            token_ok = isinstance(sent, str) and hmac.compare_digest(
                sent.encode(), identity.session.csrf.encode()
            )
            if not (self.same_origin(request) and token_ok):
                return _html(pages.message_page("Refused", "Cross-site request."), 403)
        request[_IDENTITY] = identity
        return await handler(request)

    # -- sign in and out -----------------------------------------------------------------

    async def login_form(self, _: web.Request) -> web.Response:
        return _html(pages.login_page(self.auth.kind))

    async def login(self, request: web.Request) -> web.Response:
        if not self.same_origin(request):
            return _html(pages.message_page("Refused", "Cross-site sign-in."), 403)
        form = await request.post()
        reviewer, secret = form.get("reviewer"), form.get("secret")
        # Per address *and* reviewer id: behind an ingress every client has the same address,
        # and one person's typos must not lock the others out.
        client = f"{request.remote or '?'}|{reviewer.strip() if isinstance(reviewer, str) else ''}"
        if self.throttle.blocked(client):
            self.observer.on_login("throttled")
            page = pages.login_page(self.auth.kind, "Too many failed attempts; wait a minute.")
            return _html(page, 429)
        ok = (
            isinstance(reviewer, str)
            and isinstance(secret, str)
            and await self.auth.verify_async(reviewer.strip(), secret)
        )
        if not ok or not isinstance(reviewer, str):
            self.throttle.failed(client)
            self.observer.on_login("failed")
            # A little wait per failure slows guessing; the throttle bounds it per address.
            await asyncio.sleep(self.failed_login_delay_s)
            return _html(pages.login_page(self.auth.kind, "Wrong reviewer or secret."), 401)
        session = self.sessions.create(reviewer.strip())
        self.observer.on_login("ok")
        response = _see_other("/")
        response.set_cookie(
            self.cookie,
            session.id,
            max_age=max(1, math.ceil(self.session_s)),
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="Strict",
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        identity = request[_IDENTITY]
        if identity.session is not None:
            self.sessions.end(identity.session.id)
        response = _see_other("/login")
        response.del_cookie(self.cookie, path="/", secure=self.secure, samesite="Strict")
        return response

    # -- queues and items ----------------------------------------------------------------

    @staticmethod
    def _csrf(identity: Identity) -> str:
        # A Bearer client has no session; its forms are never checked, so any value will do.
        return identity.session.csrf if identity.session is not None else ""

    async def index(self, request: web.Request) -> web.Response:
        identity = request[_IDENTITY]
        page = pages.queues_page(self.queues.stats(), identity.reviewer, self._csrf(identity))
        return _html(page)

    @staticmethod
    def _queue(request: web.Request) -> Queue:
        name = request.match_info["queue"]
        for queue in QUEUES:
            if queue == name:
                return queue
        raise web.HTTPNotFound(text="no such queue")

    async def item(self, request: web.Request) -> web.Response:
        identity = request[_IDENTITY]
        queue = self._queue(request)
        shown = request.query.get("outcome")
        outcome = next((o for o in pages.OUTCOME_TEXT if o == shown), None)
        lease = self.queues.lease(queue, identity.reviewer)
        csrf = self._csrf(identity)
        if lease is None:
            return _html(pages.empty_queue_page(queue, identity.reviewer, csrf, outcome))
        return _html(pages.item_page(lease, identity.reviewer, csrf, outcome))

    async def decide(self, request: web.Request) -> web.Response:
        identity = request[_IDENTITY]
        queue = self._queue(request)
        form = await request.post()
        lease_id, note = form.get("lease"), form.get("note")
        label = None if "neither" in form else form.get("label")
        if not isinstance(lease_id, str) or ("neither" not in form and not isinstance(label, str)):
            raise web.HTTPBadRequest(text="a decision needs a lease and a label or 'neither'")
        note_text = note.strip()[: pages.NOTE_MAX_CHARS] if isinstance(note, str) else ""
        lease = self.queues.lease_of(lease_id, identity.reviewer)
        seconds = None if lease is None else max(0.0, time.time() - lease.shown_ms / 1000)
        outcome = await self.queues.decide(
            lease_id,
            identity.reviewer,
            label if isinstance(label, str) else None,
            note_text or None,
        )
        self.observer.on_decision(queue, identity.reviewer, seconds, outcome)
        return _see_other(f"/queue/{queue}?outcome={outcome}")

    async def skip(self, request: web.Request) -> web.Response:
        identity = request[_IDENTITY]
        queue = self._queue(request)
        lease_id = (await request.post()).get("lease")
        if isinstance(lease_id, str):
            self.queues.release(lease_id, identity.reviewer)
            self.observer.on_skip(queue, identity.reviewer)
        # The queues hand the skipper other items first (ReviewQueues.release), so the queue
        # page shows the next item, and this one only when nothing else is left.
        return _see_other(f"/queue/{queue}")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cache-Control"] = "no-cache" if request.path.startswith("/static/") else "no-store"


def make_app(
    queues: ReviewQueues,
    auth: Authenticator,
    *,
    secure_cookies: bool,
    observer: ConsoleObserver | None = None,
    session_s: float = SESSION_S,
    failed_login_delay_s: float = 0.5,
) -> web.Application:
    """The console's application, for :class:`ReviewConsole` or aiohttp's test client."""
    console = _Console(
        queues,
        auth,
        secure_cookies=secure_cookies,
        observer=observer or NullObserver(),
        session_s=session_s,
        failed_login_delay_s=failed_login_delay_s,
    )
    # A decision form is a few kilobytes; nothing legitimate comes near 64 KiB.
    app = web.Application(middlewares=[console.guard], client_max_size=64 * 1024)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", console.index)
    app.router.add_get("/login", console.login_form)
    app.router.add_post("/login", console.login)
    app.router.add_post("/logout", console.logout)
    app.router.add_get("/queue/{queue}", console.item)
    app.router.add_post("/queue/{queue}/decide", console.decide)
    app.router.add_post("/queue/{queue}/skip", console.skip)
    app.router.add_static("/static/", STATIC_DIR)
    return app


class ReviewConsole:
    """The console's server, as an async context manager; ``port`` is known once entered."""

    def __init__(
        self,
        queues: ReviewQueues,
        auth: Authenticator,
        *,
        host: str,
        port: int,
        secure_cookies: bool,
        observer: ConsoleObserver | None = None,
        session_s: float = SESSION_S,
        failed_login_delay_s: float = 0.5,
    ) -> None:
        self.app = make_app(
            queues,
            auth,
            secure_cookies=secure_cookies,
            observer=observer,
            session_s=session_s,
            failed_login_delay_s=failed_login_delay_s,
        )
        self._host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> ReviewConsole:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
