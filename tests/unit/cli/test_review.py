"""``escalator review hash`` (cli/review.py): the line it prints is one the console's files
accept for that secret, a token is shown once on stderr, a password is read once from a pipe
or twice at a terminal, and a short or mistyped one is refused in one line. ``review serve`` is
wiring (the console's parts: tests/unit/review/; the process: tests/integration/)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from escalator.cli import review
from escalator.cli.main import main
from escalator.review.auth import load_authenticator

PASSWORD = "correct horse battery"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _line(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    [line] = captured.out.splitlines()
    return line, captured.err


def test_a_piped_password_hashes_to_a_line_the_passwords_file_accepts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One line of stdin (its newline not part of it): ``name:scrypt$...``, which signs that
    reviewer in with that password and no other."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["review", "hash", "alice"]) == 0
    line, err = _line(capsys)
    assert line.startswith("alice:scrypt$") and err == ""
    (tmp_path / "passwords").write_text(line + "\n")
    auth = load_authenticator(None, tmp_path / "passwords")
    assert auth.verify("alice", PASSWORD)
    assert not auth.verify("alice", PASSWORD + "\n") and not auth.verify("bob", PASSWORD)


def test_a_token_is_made_shown_once_on_stderr_and_its_hash_printed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--kind token: a random token on stderr only, the stdout line its hash; two runs make
    two different tokens."""
    assert main(["review", "hash", "bob", "--kind", "token"]) == 0
    line, err = _line(capsys)
    token = err.strip().rsplit(" ", 1)[-1]
    assert err.startswith("token for bob (shown once; give it to them): ")
    assert line.startswith("bob:sha256$") and token not in line
    (tmp_path / "tokens").write_text(line + "\n")
    assert load_authenticator(tmp_path / "tokens", None).bearer(token) == "bob"
    assert main(["review", "hash", "bob", "--kind", "token"]) == 0
    assert _line(capsys)[0] != line


def test_a_short_password_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under 12 characters: exit 2, one line, nothing on stdout."""
    monkeypatch.setattr("sys.stdin", io.StringIO("elevenchars\n"))
    assert main(["review", "hash", "alice"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "escalator: error: a review password must have at least 12 characters"
    )


@pytest.mark.parametrize(("again", "code"), [(PASSWORD, 0), (PASSWORD + "x", 2)])
def test_at_a_terminal_the_password_is_asked_twice_and_must_match(
    again: str, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At a terminal: read twice without echo; the same twice hashes, two different ones are
    refused naming the mismatch."""
    answers = iter([PASSWORD, again])
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr(review.getpass, "getpass", getpass)
    assert main(["review", "hash", "alice"]) == code
    assert prompts == ["password: ", "again: "]
    captured = capsys.readouterr()
    if code:
        assert "the two passwords differ" in captured.err and captured.out == ""
    else:
        assert captured.out.startswith("alice:scrypt$")
