"""The console's credentials: file parsing, hashes, sessions and the login throttle."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from escalator.errors import ConfigError
from escalator.review.auth import (
    PASSWORDS_VARIABLE,
    TOKENS_VARIABLE,
    Authenticator,
    LoginThrottle,
    Sessions,
    hash_secret,
    load_authenticator,
    new_token,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "reviewers"
    path.write_text(text)
    return path


def test_a_password_hash_verifies_and_a_wrong_password_fails() -> None:
    """scrypt hashes are salted per call and verify only the secret they were made from."""
    one, two = hash_secret("password", "correct horse"), hash_secret("password", "correct horse")
    assert one != two and one.startswith("scrypt$16384$8$1$")
    auth = Authenticator("password", {"ana": one})
    assert auth.verify("ana", "correct horse")
    assert not auth.verify("ana", "correct hors")
    assert not auth.verify("bob", "correct horse")


def test_a_token_hash_verifies_signs_in_by_bearer_and_a_wrong_token_fails() -> None:
    """A token signs its reviewer in on the form and as a Bearer token; nothing else does."""
    token, other = new_token(), new_token()
    auth = Authenticator(
        "token", {"ana": hash_secret("token", token), "bob": hash_secret("token", other)}
    )
    assert auth.verify("ana", token) and not auth.verify("bob", token)
    assert auth.bearer(token) == "ana" and auth.bearer(other) == "bob"
    assert auth.bearer(token + "x") is None and auth.bearer("") is None


def test_passwords_never_sign_in_by_bearer() -> None:
    """Bearer is for random tokens: a password file answers no Bearer request."""
    auth = Authenticator("password", {"ana": hash_secret("password", "pw")})
    assert auth.bearer("pw") is None


async def test_verify_async_runs_scrypt_and_agrees_with_verify() -> None:
    """The event-loop-friendly check gives the same answers."""
    auth = Authenticator("password", {"ana": hash_secret("password", "pw")})
    assert await auth.verify_async("ana", "pw")
    assert not await auth.verify_async("ana", "nope")


def test_both_file_kinds_load_with_comments_and_blank_lines(tmp_path: Path) -> None:
    """Comments and blank lines are skipped; each kind's lines become its reviewers."""
    tokens = write(tmp_path, f"# reviewers\n\nana:{hash_secret('token', 't1')}\n  # x\n")
    auth = load_authenticator(tokens, None)
    assert auth.kind == "token" and auth.reviewers == {"ana"} and auth.verify("ana", "t1")
    pw = tmp_path / "pw"
    pw.write_text(f"ana:{hash_secret('password', 'a')}\nbob:{hash_secret('password', 'b')}\n")
    auth = load_authenticator(None, pw)
    assert auth.kind == "password" and auth.reviewers == {"ana", "bob"}
    assert auth.verify("bob", "b") and not auth.verify("bob", "a")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("no-colon-here", "expected reviewer-id:<hash>"),
        ("ana:", "expected reviewer-id:<hash>"),
        ("ana:sha256$abc", "sha256$<64"),
        ("ana:plaintext-token", "sha256$<64"),
        ("bad id!:sha256$" + "0" * 64, "reviewer id"),
    ],
)
def test_a_bad_tokens_line_names_the_variable_and_line(
    tmp_path: Path, line: str, problem: str
) -> None:
    """The error says which variable, which file line, and what is wrong."""
    path = write(tmp_path, f"# first\nok:{hash_secret('token', 't')}\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_authenticator(path, None)
    message = str(caught.value)
    assert message.startswith(f"{TOKENS_VARIABLE}={path} line 3:")
    assert problem in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("sha256$" + "0" * 64, "scrypt$n$r$p$salt$hash"),
        ("scrypt$16384$8$1$c2FsdHNhbHQ", "scrypt$n$r$p$salt$hash"),
        ("scrypt$1000$8$1$c2FsdHNhbHQ$" + "A" * 43, "power of two"),
        ("scrypt$1048576$8$1$c2FsdHNhbHQ$" + "A" * 43, "power of two"),
        # Within each bound, but 512 MiB: OpenSSL would refuse it at every sign-in.
        ("scrypt$131072$32$1$c2FsdHNhbHQ$" + "A" * 43, "n*r too large"),
        ("scrypt$x$8$1$c2FsdHNhbHQ$" + "A" * 43, "integers"),
        ("scrypt$16384$8$1$c2E$" + "A" * 43, "salt"),
    ],
)
def test_a_bad_passwords_line_names_the_variable_and_line(
    tmp_path: Path, value: str, problem: str
) -> None:
    """A malformed scrypt hash is refused at start-up, not at the first login."""
    path = write(tmp_path, f"ana:{value}\n")
    with pytest.raises(ConfigError) as caught:
        load_authenticator(None, path)
    assert str(caught.value).startswith(f"{PASSWORDS_VARIABLE}={path} line 1:")
    assert problem in str(caught.value)


def test_the_largest_parameters_accepted_can_sign_in(tmp_path: Path) -> None:
    """The memory bound and OpenSSL's agree: n=2**17, r=15 is accepted and checks a secret."""
    salt = b"saltsalt"
    key = hashlib.scrypt(b"s3cret", salt=salt, n=2**17, r=15, p=1, dklen=32, maxmem=2**30)
    b64 = [base64.urlsafe_b64encode(x).rstrip(b"=").decode() for x in (salt, key)]
    line = f"scrypt$131072$15$1${b64[0]}${b64[1]}"
    auth = load_authenticator(None, write(tmp_path, f"ana:{line}\n"))
    assert auth.verify("ana", "s3cret") and not auth.verify("ana", "other")


def test_a_reviewer_listed_twice_is_an_error(tmp_path: Path) -> None:
    """Two lines for one reviewer would make one of them silently unusable."""
    h = hash_secret("token", "t")
    path = write(tmp_path, f"ana:{h}\nana:{h}\n")
    with pytest.raises(ConfigError, match=r"line 2: reviewer 'ana' is listed twice"):
        load_authenticator(path, None)


def test_missing_empty_or_doubly_configured_files_are_errors(tmp_path: Path) -> None:
    """Nothing is served without sign-in, so a console without a usable file cannot start."""
    with pytest.raises(ConfigError, match=TOKENS_VARIABLE + r"=.*cannot read it"):
        load_authenticator(tmp_path / "absent", None)
    with pytest.raises(ConfigError, match=PASSWORDS_VARIABLE + r"=.*lists no reviewer"):
        load_authenticator(None, write(tmp_path, "# nobody yet\n"))
    with pytest.raises(ConfigError, match="needs ESCALATOR_REVIEW_TOKENS_FILE or"):
        load_authenticator(None, None)
    with pytest.raises(ConfigError, match="both set"):
        load_authenticator(tmp_path / "a", tmp_path / "b")


def test_hash_secret_refuses_an_empty_secret() -> None:
    """An empty token or password would let anyone in."""
    with pytest.raises(ValueError, match="empty"):
        hash_secret("token", "")


def test_sessions_expire_and_end() -> None:
    """A session lives for its lifetime, then is gone; ending it removes it at once."""
    now = [1000.0]
    sessions = Sessions(60.0, clock=lambda: now[0])
    one = sessions.create("ana")
    two = sessions.create("ana")
    assert one.id != two.id and one.csrf != two.csrf
    assert sessions.get(one.id) == one
    sessions.end(one.id)
    assert sessions.get(one.id) is None
    now[0] += 61
    assert sessions.get(two.id) is None


def test_sessions_are_bounded() -> None:
    """Past the limit the oldest session goes, so memory stays bounded."""
    sessions = Sessions(60.0, limit=2)
    a, b, c = (sessions.create(r) for r in ("a", "b", "c"))
    assert sessions.get(a.id) is None and sessions.get(b.id) and sessions.get(c.id)


def test_the_throttle_blocks_after_repeated_failures_and_forgets_them() -> None:
    """Five failures in a minute block that address (only that one) until they age out."""
    now = [0.0]
    throttle = LoginThrottle(failures=5, window_s=60.0, clock=lambda: now[0])
    for _ in range(5):
        assert not throttle.blocked("client-a")
        throttle.failed("client-a")
    assert throttle.blocked("client-a") and not throttle.blocked("client-b")
    now[0] += 61
    assert not throttle.blocked("client-a")
