"""The dependency audit says what it audited, and fails only on what it could check."""

from __future__ import annotations

from typing import Any

from escalator_dev.audit import Finding, audit, read_pins

PINS = {"aiokafka": "0.14.0", "orjson": "3.11.0", "numpy": "2.3.0"}


class FakeSources:
    """pip-audit's answers and PyPI's latest releases, as given."""

    def __init__(
        self,
        pip_audit: dict[str, list[Finding] | str],
        latest: dict[str, tuple[str, list[dict[str, Any]]] | str],
    ) -> None:
        self._pip_audit = pip_audit
        self._latest = latest

    def pip_audit(self, pins: dict[str, str]) -> dict[str, list[Finding] | str]:
        return self._pip_audit

    def latest(self, name: str) -> tuple[str, list[dict[str, Any]]] | str:
        return self._latest.get(name, "unreachable")


SKIP = "Dependency not found on PyPI and could not be audited"


def test_a_machine_that_reaches_no_source_says_it_audited_nothing() -> None:
    """Every package skipped and no project JSON: one line saying NOTHING audited, no failure
    (and never "No known vulnerabilities found")."""
    outcome = audit(PINS, FakeSources(dict.fromkeys(PINS, SKIP), {}))
    assert outcome.audited == 0 and not outcome.failed_reasons()
    assert outcome.line().startswith("audit: NOTHING audited")
    assert len(outcome.not_audited) == 3


def test_pins_at_their_latest_release_are_audited_against_its_advisories() -> None:
    """pip-audit reaches nothing; two pins are the latest release (one has an advisory, which
    fails the audit), one is older and is counted as not audited, its advisory only shown."""
    advisory = {"id": "PYSEC-2026-1", "fixed_in": ["3.11.1"], "withdrawn": None}
    latest: dict[str, tuple[str, list[dict[str, Any]]] | str] = {
        "aiokafka": ("0.14.0", []),
        "orjson": ("3.11.0", [advisory]),
        "numpy": ("2.4.0", [{"id": "GHSA-x", "fixed_in": []}]),
    }
    outcome = audit(PINS, FakeSources(dict.fromkeys(PINS, SKIP), latest))
    assert outcome.by_latest == {"aiokafka", "orjson"} and outcome.by_pip_audit == set()
    assert outcome.findings == [Finding("orjson", "3.11.0", "PYSEC-2026-1", ("3.11.1",))]
    assert outcome.not_audited == {"numpy": "pinned 2.3.0, latest 2.4.0"}
    assert [f.advisory for f in outcome.maybe] == ["GHSA-x"]
    assert outcome.failed_reasons() == [
        "known vulnerability: orjson 3.11.0: PYSEC-2026-1 (fixed in 3.11.1)"
    ]
    assert outcome.line() == (
        "audit: 2 of 3 pinned packages audited (0 by pip-audit against each release's "
        "advisories, 2 pinned at their latest release against PyPI's latest-release "
        "advisories); 1 NOT audited (no source for their release here); 1 known vulnerability"
    )


def test_a_reachable_source_that_skips_a_package_fails_the_audit() -> None:
    """pip-audit audited two packages, so its source answers; the one it skipped (and that no
    other source covers) fails the audit instead of passing silently."""
    sources = FakeSources({"aiokafka": [], "orjson": [], "numpy": SKIP}, {"numpy": ("2.4.0", [])})
    outcome = audit(PINS, sources)
    assert outcome.by_pip_audit == {"aiokafka", "orjson"}
    assert outcome.failed_reasons() == [
        "pip-audit's source answered for some packages but could not audit numpy"
    ]


def test_withdrawn_advisories_do_not_count_and_lock_lines_are_read() -> None:
    """A withdrawn advisory is no finding; pins are read from name==version lines only."""
    latest: dict[str, tuple[str, list[dict[str, Any]]] | str] = {
        "aiokafka": ("0.14.0", [{"id": "PYSEC-old", "withdrawn": "2026-01-01T00:00:00Z"}])
    }
    outcome = audit({"aiokafka": "0.14.0"}, FakeSources({"aiokafka": SKIP}, latest))
    assert outcome.audited == 1 and outcome.findings == []
    assert read_pins(
        [
            "# comment",
            "",
            "-e .",
            "Typing_Extensions==4.15.0 ; python_version>'3'",
            "aiokafka==0.14.0",
        ]
    ) == {"typing-extensions": "4.15.0", "aiokafka": "0.14.0"}
