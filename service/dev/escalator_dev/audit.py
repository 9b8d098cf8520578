"""``make audit``: known vulnerabilities in every pinned package, and one true line about what
was audited.

pip-audit asks PyPI for each pinned release's advisories (``/pypi/<name>/<version>/json``).
Where that is not served (this development machine's PyPI answers 404 to every such URL, and
OSV is out of reach), pip-audit skips every package, prints "No known vulnerabilities found"
and exits 0: an audit of nothing that says it passed. Here instead:

1. pip-audit runs as before. A package it audited counts as audited, with its findings.
2. A package it skipped is looked up in PyPI's project JSON (``/pypi/<name>/json``), which
   carries the advisories of the project's **latest** release. When the pin is that release,
   those advisories are the pin's: the package is audited. When the pin is older, nothing
   served says which advisories apply to it: the package is *not audited*, and is counted as
   such (advisories open on the latest release are printed, as they may apply).
3. One line says what was audited, by which source, and what was not. It fails (exit 1) on a
   known vulnerability in an audited package, and when pip-audit's own source answered for
   some packages but skipped others (a source that is reachable and still could not audit a
   package). When no source answers at all it says "NOTHING audited" and exits 0, because a
   machine without the network cannot be made to pass or fail on advisories it cannot see.

Sources tried on the development machine (README, Development): PyPI's per-release JSON (404),
PyPI's project JSON (served: latest release only), PyPI's simple API (served, no advisories),
api.osv.dev and OSV's bucket, ecosyste.ms, deps.dev, OSS Index, NVD, the Debian security
tracker (none reachable); npm's ``@renovatebot/osv-offline`` fetches its database from GitHub
at run time (not reachable); PyPI's ``safety-db`` stopped at 2021-07.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

PYPI = "https://pypi.org/pypi"


@dataclass(frozen=True, slots=True)
class Finding:
    package: str
    version: str
    advisory: str
    fixed_in: tuple[str, ...] = ()

    def __str__(self) -> str:
        fix = f" (fixed in {', '.join(self.fixed_in)})" if self.fixed_in else " (no fix listed)"
        return f"{self.package} {self.version}: {self.advisory}{fix}"


@dataclass(slots=True)
class Outcome:
    """What the audit found, package by package."""

    pins: dict[str, str]
    #: Audited by pip-audit (its per-release source), and by the latest-release data.
    by_pip_audit: set[str] = field(default_factory=set)
    by_latest: set[str] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    #: Not audited: name -> why.
    not_audited: dict[str, str] = field(default_factory=dict)
    #: Advisories open on a newer latest release than the pin (they may apply).
    maybe: list[Finding] = field(default_factory=list)

    @property
    def audited(self) -> int:
        return len(self.by_pip_audit) + len(self.by_latest)

    def failed_reasons(self) -> list[str]:
        reasons = [f"known vulnerability: {f}" for f in self.findings]
        if self.by_pip_audit:
            skipped = sorted(n for n in self.not_audited if n not in self.by_latest)
            if skipped:
                reasons.append(
                    "pip-audit's source answered for some packages but could not audit "
                    + ", ".join(skipped)
                )
        return reasons

    def line(self) -> str:
        total = len(self.pins)
        if self.audited == 0:
            return (
                f"audit: NOTHING audited: no vulnerability source answered for any of the {total} "
                "pinned packages (PyPI's per-release advisories and OSV not reachable; PyPI's "
                "latest-release advisories cover no pin)"
            )
        vulns = len(self.findings)
        parts = [
            f"audit: {self.audited} of {total} pinned packages audited "
            f"({len(self.by_pip_audit)} by pip-audit against each release's advisories, "
            f"{len(self.by_latest)} pinned at their latest release against PyPI's "
            "latest-release advisories)",
        ]
        if self.not_audited:
            parts.append(f"{len(self.not_audited)} NOT audited (no source for their release here)")
        parts.append(f"{vulns} known vulnerabilit{'y' if vulns == 1 else 'ies'}")
        return "; ".join(parts)


class Sources(Protocol):
    """Where advisories come from (the real ones: pip-audit and PyPI's JSON API)."""

    def pip_audit(self, pins: dict[str, str]) -> dict[str, list[Finding] | str]:
        """name -> findings, or the reason pip-audit skipped it."""
        ...

    def latest(self, name: str) -> tuple[str, list[dict[str, Any]]] | str:
        """(latest version, its advisories), or why it could not be fetched."""
        ...


def read_pins(lines: Iterable[str]) -> dict[str, str]:
    """``name==version`` lines of a lock file (comments, options and blanks skipped)."""
    pins: dict[str, str] = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        name, _, version = line.partition("==")
        pins[normalise(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pins


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def audit(pins: dict[str, str], sources: Sources) -> Outcome:
    outcome = Outcome(pins)
    skipped: list[str] = []
    for name, result in sources.pip_audit(pins).items():
        if isinstance(result, str):
            skipped.append(name)
        else:
            outcome.by_pip_audit.add(name)
            outcome.findings.extend(result)
    skipped += [n for n in pins if n not in outcome.by_pip_audit and n not in skipped]
    with ThreadPoolExecutor(max_workers=8) as pool:
        latest = dict(zip(skipped, pool.map(sources.latest, skipped), strict=True))
    for name in skipped:
        answer = latest[name]
        pin = pins[name]
        if isinstance(answer, str):
            outcome.not_audited[name] = answer
            continue
        version, advisories = answer
        found = [
            Finding(name, pin, str(a.get("id")), tuple(str(v) for v in a.get("fixed_in") or ()))
            for a in advisories
            if not a.get("withdrawn")
        ]
        if version == pin:
            outcome.by_latest.add(name)
            outcome.findings.extend(found)
        else:
            outcome.not_audited[name] = f"pinned {pin}, latest {version}"
            outcome.maybe.extend(found)
    return outcome


class Live:
    """pip-audit in a subprocess, and PyPI's project JSON over HTTPS."""

    def __init__(self, lock: Path, fetch: Callable[[str], bytes] | None = None) -> None:
        self.lock = lock
        self._fetch = fetch or _get

    def pip_audit(self, pins: dict[str, str]) -> dict[str, list[Finding] | str]:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.json"
            command = [sys.executable, "-m", "pip_audit", "-r", str(self.lock)]
            command += ["--progress-spinner", "off", "-f", "json", "-o", str(report)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if not report.exists():
                print(done.stderr.strip()[-2000:], file=sys.stderr)  # noqa: T201
                return {}
            data = json.loads(report.read_text())
        out: dict[str, list[Finding] | str] = {}
        for dep in data.get("dependencies", []):
            name = normalise(str(dep.get("name", "")))
            if "skip_reason" in dep:
                out[name] = str(dep["skip_reason"])
                continue
            out[name] = [
                Finding(
                    name,
                    str(dep.get("version")),
                    str(v.get("id")),
                    tuple(v.get("fix_versions") or ()),
                )
                for v in dep.get("vulns", [])
            ]
        return out

    def latest(self, name: str) -> tuple[str, list[dict[str, Any]]] | str:
        try:
            data = json.loads(self._fetch(f"{PYPI}/{name}/json"))
        except (OSError, ValueError) as exc:
            return f"PyPI project JSON not available ({exc})"
        return str(data["info"]["version"]), list(data.get("vulnerabilities") or [])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as response:
        body: bytes = response.read()
        return body


def main(argv: list[str]) -> int:
    lock = Path(argv[0] if argv else "requirements.lock")
    pins = read_pins(lock.read_text().splitlines())
    outcome = audit(pins, Live(lock))
    for finding in outcome.maybe:
        print(f"audit: advisory open on the latest release, may apply to the pin: {finding}")  # noqa: T201
    if outcome.not_audited:
        names = ", ".join(f"{n} ({why})" for n, why in sorted(outcome.not_audited.items()))
        print(f"audit: not audited: {names}")  # noqa: T201
    failed = outcome.failed_reasons()
    for reason in failed:
        print(f"audit: {reason}")  # noqa: T201
    print(outcome.line())  # noqa: T201
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
