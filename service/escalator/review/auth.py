"""Who a reviewer is: the credentials files, their hashes, sessions and the login throttle.

Exactly one of two files says who may use the console, one ``reviewer-id:<hash>`` a line
(``#`` comments and blank lines allowed). Only hashes are stored:

- **tokens** (``ESCALATOR_REVIEW_TOKENS_FILE``): ``sha256$<64 hex digits>``. A token is
  random (:func:`new_token`, 256 bits), so a fast hash is enough. It signs in on the login
  form and, for scripts, as ``Authorization: Bearer <token>``.
- **passwords** (``ESCALATOR_REVIEW_PASSWORDS_FILE``): ``scrypt$<n>$<r>$<p>$<salt>$<hash>``
  (salt and hash in unpadded URL-safe base64), a salt per line. People choose passwords, so
  they get a slow, memory-hard hash. Passwords sign in on the login form only.

:func:`hash_secret` writes either form (``escalator review hash``). Every comparison is
:func:`hmac.compare_digest`, and an unknown reviewer costs as much time as a wrong secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from escalator.errors import ConfigError

Kind = Literal["token", "password"]
TOKENS_VARIABLE = "ESCALATOR_REVIEW_TOKENS_FILE"
PASSWORDS_VARIABLE = "ESCALATOR_REVIEW_PASSWORDS_FILE"
#: 2**14 x 8 x 1 is scrypt's interactive-login setting: about 16 MiB and 50 ms a check.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
#: Reviewer ids go into decision records and the page: a plain, printable alphabet.
REVIEWER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_SHA256 = re.compile(r"sha256\$([0-9a-f]{64})")


def new_token() -> str:
    """A fresh random token for a reviewer (give it to them; store its hash)."""
    return secrets.token_urlsafe(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


#: OpenSSL's default cap (32 MiB) is just above n=2**14, r=8; allow up to n=2**17 at r=15.
SCRYPT_MAXMEM = 256 * 1024 * 1024


def _scrypt_memory(n: int, r: int, p: int) -> int:
    """The bytes OpenSSL's scrypt asks for, which it refuses above ``maxmem``."""
    return 128 * r * (n + p + 2)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(
        secret.encode(), salt=salt, n=n, r=r, p=p, dklen=size, maxmem=SCRYPT_MAXMEM
    )


def hash_secret(kind: Kind, secret: str) -> str:
    """The line's hash for ``secret``: ``sha256$...`` for a token, ``scrypt$...`` else."""
    if not secret:
        raise ValueError("the secret is empty")
    if kind == "token":
        return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, _KEY_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


@dataclass(frozen=True, slots=True)
class _Scrypt:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def matches(self, secret: str) -> bool:
        got = _scrypt(secret, self.salt, self.n, self.r, self.p, len(self.key))
        return hmac.compare_digest(got, self.key)


def _parse_scrypt(text: str) -> _Scrypt:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("the hash must be scrypt$n$r$p$salt$hash")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error) as exc:
        raise ValueError("n, r and p must be integers and salt, hash base64") from exc
    # Bounds keep a typo from making every login take minutes or gigabytes.
    if n < 2 or n & (n - 1) or n > 2**17 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError("n must be a power of two up to 2**17, r 1 to 32, p 1 to 16")
    if _scrypt_memory(n, r, p) > SCRYPT_MAXMEM:
        # Refused here, not at every sign-in (OpenSSL's "memory limit exceeded").
        raise ValueError(f"n*r too large: 128*r*(n+p+2) must be at most {SCRYPT_MAXMEM} bytes")
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("the salt must be at least 8 bytes and the hash at least 16")
    return _Scrypt(n, r, p, salt, key)


class Authenticator:
    """The reviewers of one credentials file, and how to check a secret against them."""

    def __init__(self, kind: Kind, hashes: dict[str, str]) -> None:
        if not hashes:
            raise ValueError("no reviewers")
        self.kind: Kind = kind
        self._tokens: dict[str, bytes] = {}
        self._passwords: dict[str, _Scrypt] = {}
        for reviewer, text in hashes.items():
            if not REVIEWER_RE.fullmatch(reviewer):
                raise ValueError(f"reviewer id {reviewer!r} must match {REVIEWER_RE.pattern}")
            if kind == "token":
                m = _SHA256.fullmatch(text)
                if m is None:
                    raise ValueError("the hash must be sha256$<64 lower-case hex digits>")
                self._tokens[reviewer] = bytes.fromhex(m.group(1))
            else:
                self._passwords[reviewer] = _parse_scrypt(text)
        # A wrong reviewer id is checked against this, so it costs what a wrong password does.
        self._decoy = _Scrypt(SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\0" * _SALT_BYTES, b"\0" * 32)

    @property
    def reviewers(self) -> frozenset[str]:
        return frozenset(self._tokens or self._passwords)

    def verify(self, reviewer: str, secret: str) -> bool:
        """True when ``secret`` is this reviewer's token or password (CPU-bound for scrypt)."""
        if self.kind == "token":
            want = self._tokens.get(reviewer, b"\0" * 32)
            got = hashlib.sha256(secret.encode()).digest()
            return hmac.compare_digest(got, want) and reviewer in self._tokens
        entry = self._passwords.get(reviewer, self._decoy)
        return entry.matches(secret) and reviewer in self._passwords

    async def verify_async(self, reviewer: str, secret: str) -> bool:
        """:meth:`verify` off the event loop: scrypt holds the CPU for tens of milliseconds."""
        if self.kind == "token":
            return self.verify(reviewer, secret)
        return await asyncio.to_thread(self.verify, reviewer, secret)

    def bearer(self, token: str) -> str | None:
        """The reviewer whose token this is (tokens file only), else None."""
        if self.kind != "token" or not token:
            return None
        got = hashlib.sha256(token.encode()).digest()
        found = None
        # Every entry is compared, so the time taken says nothing about which one matched.
        for reviewer, want in self._tokens.items():
            if hmac.compare_digest(got, want):
                found = reviewer
        return found


def _read(path: Path, variable: str, kind: Kind) -> Authenticator:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{variable}={path}: cannot read it ({exc})") from exc
    hashes: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        reviewer, sep, value = line.partition(":")
        reviewer, value = reviewer.strip(), value.strip()
        where = f"{variable}={path} line {number}"
        if not sep or not reviewer or not value:
            raise ConfigError(f"{where}: expected reviewer-id:<hash>")
        if reviewer in hashes:
            raise ConfigError(f"{where}: reviewer {reviewer!r} is listed twice")
        try:
            Authenticator(kind, {reviewer: value})
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        hashes[reviewer] = value
    if not hashes:
        raise ConfigError(f"{variable}={path}: lists no reviewer")
    return Authenticator(kind, hashes)


def load_authenticator(tokens_file: Path | None, passwords_file: Path | None) -> Authenticator:
    """The reviewers of the one configured file; ConfigError naming the variable otherwise."""
    if tokens_file is not None and passwords_file is not None:
        raise ConfigError(f"{TOKENS_VARIABLE} and {PASSWORDS_VARIABLE} are both set; choose one")
    if tokens_file is not None:
        return _read(tokens_file, TOKENS_VARIABLE, "token")
    if passwords_file is not None:
        return _read(passwords_file, PASSWORDS_VARIABLE, "password")
    raise ConfigError(
        f"the review console needs {TOKENS_VARIABLE} or {PASSWORDS_VARIABLE}: "
        "nothing is served without signing in"
    )


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    reviewer: str
    #: Sent back in every form of this session's pages; a POST without it is refused.
    csrf: str
    expires_at: float


class Sessions:
    """Signed-in reviewers, in memory: a restart signs everyone out, which is acceptable."""

    def __init__(
        self, lifetime_s: float, *, limit: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._lifetime_s = lifetime_s
        self._limit = limit
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def create(self, reviewer: str) -> Session:
        now = self._clock()
        self._by_id = {k: s for k, s in self._by_id.items() if s.expires_at > now}
        while len(self._by_id) >= self._limit:
            # Dicts keep insertion order: the oldest session goes first.
            del self._by_id[next(iter(self._by_id))]
        session = Session(
            id=secrets.token_urlsafe(32),
            reviewer=reviewer,
            csrf=secrets.token_urlsafe(32),
            expires_at=now + self._lifetime_s,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._by_id[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)


class LoginThrottle:
    """At most ``failures`` failed logins per client (address and reviewer id) in
    ``window_s``; then a wait."""

    def __init__(
        self, failures: int = 5, window_s: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._failures = failures
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        times = self._seen.setdefault(client, deque())
        cutoff = self._clock() - self._window_s
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def blocked(self, client: str) -> bool:
        blocked = len(self._recent(client)) >= self._failures
        if not self._seen.get(client):
            self._seen.pop(client, None)
        return blocked

    def failed(self, client: str) -> None:
        if len(self._seen) > 10_000:
            # Bounded memory under a spray of addresses: forget everyone rather than grow.
            self._seen.clear()
        self._recent(client).append(self._clock())
