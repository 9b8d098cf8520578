"""A local simulator of the part of Anthropic's Messages API that Escalator uses.

It stands in for Claude where no API key (or no network) exists: in tests, in CI, in the demo.
Everything measured against it is *simulated* and is labelled so.

What it implements, for ``POST /v1/messages``:
- ``model``, ``system`` (a string, or text blocks with ``cache_control``), ``messages``,
  ``max_tokens`` and ``output_config.format`` (a JSON schema; the label enum is read from it);
- a well-formed Message back, with ``usage`` computed deterministically from the request,
  including ``cache_creation_input_tokens`` / ``cache_read_input_tokens`` when a cached system
  prefix of at least ``cache_min_tokens`` tokens is reused within its TTL;
- Anthropic-shaped errors (``{"type": "error", "error": {...}}``) with the real status codes.

The answering rule (deterministic from the text; the simulator never sees gold labels) is
documented in ``docs/SIMULATOR.md`` and implemented in :func:`classify`.

Faults are injected per run (``--fault KIND:RATE``, ``--latency``), per request (header
``x-sim-fault: KIND``, ``x-sim-latency-ms: N``), by a marker in the text (``[[sim:KIND]]``, so
that a pipeline test can make one record fail every time), or at run time through
``POST /_sim/config``. KIND is one of 429, 529, 500, hang, bad-schema, bad-label.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import math
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from aiohttp import web

FAULT_KINDS = ("429", "529", "500", "hang", "bad-schema", "bad-label")
DOCUMENT_RE = re.compile(r"<document>(.*?)</document>", re.DOTALL)
MARKER_RE = re.compile(r"\[\[sim:([a-z0-9-]+)\]\]")
WORD_RE = re.compile(r"[a-z][a-z'-]*")

# Words that push towards "unsafe", with weights. Deliberately crude: a keyword model.
UNSAFE_TERMS: dict[str, int] = {
    "kill": 3,
    "killing": 3,
    "murder": 3,
    "bomb": 3,
    "explosive": 3,
    "explosives": 3,
    "poison": 3,
    "poisoning": 3,
    "weapon": 2,
    "weapons": 2,
    "gun": 2,
    "guns": 2,
    "shoot": 2,
    "stab": 3,
    "knife": 1,
    "attack": 2,
    "terrorist": 3,
    "terrorism": 3,
    "suicide": 3,
    "self-harm": 3,
    "overdose": 2,
    "meth": 3,
    "cocaine": 2,
    "heroin": 2,
    "drugs": 1,
    "hack": 2,
    "hacking": 2,
    "malware": 3,
    "ransomware": 3,
    "phishing": 2,
    "exploit": 2,
    "steal": 2,
    "stealing": 2,
    "fraud": 2,
    "launder": 2,
    "laundering": 2,
    "scam": 2,
    "hate": 2,
    "racist": 2,
    "slur": 3,
    "nazi": 3,
    "genocide": 3,
    "abuse": 2,
    "torture": 3,
    "threat": 1,
    "threaten": 2,
    "harass": 2,
    "harassment": 2,
    "illegal": 1,
    "violence": 2,
    "violent": 2,
    "blood": 1,
    "hurt": 1,
    "harm": 1,
    "dangerous": 1,
    "toxic": 1,
    "counterfeit": 2,
    "trafficking": 3,
    "kidnap": 3,
    "extort": 2,
    "blackmail": 2,
    "arson": 3,
    "detonate": 3,
}
# Words that signal refusal, safety advice or discussion at a distance.
MITIGATING_TERMS = frozenset(
    {
        "prevent",
        "prevention",
        "safety",
        "safely",
        "report",
        "hotline",
        "help",
        "support",
        "cannot",
        "can't",
        "won't",
        "sorry",
        "unable",
        "refuse",
        "instead",
        "professional",
        "seek",
        "awareness",
        "protect",
        "history",
        "historical",
        "fiction",
        "legal",
        "law",
        "policy",
        "educational",
        "research",
        "avoid",
        "dangers",
        "risks",
        "counseling",
    }
)
# Terms only the strong profile knows: its wider vocabulary is part of why it is right more.
STRONG_EXTRA_TERMS: dict[str, int] = {
    "beat": 2,
    "hijack": 3,
    "anorexia": 2,
    "starve": 2,
    "starving": 2,
    "purge": 2,
    "cut": 1,
    "cutting": 1,
    "die": 1,
    "dead": 1,
    "death": 1,
    "lethal": 2,
    "gas": 1,
    "fake": 1,
    "lie": 1,
    "hoax": 2,
    "conspiracy": 2,
    "vaccine": 1,
    "propaganda": 2,
    "address": 1,
    "ssn": 3,
    "password": 1,
    "credentials": 2,
    "track": 1,
    "stalk": 3,
    "spy": 2,
    "inferior": 3,
    "subhuman": 3,
    "vermin": 3,
    "sex": 2,
    "sexual": 2,
    "nude": 2,
    "explicit": 1,
    "payload": 2,
    "inject": 2,
    "injection": 2,
    "keylogger": 3,
    "botnet": 3,
    "ddos": 3,
    "rootkit": 3,
    "shellcode": 3,
    "deepfake": 2,
    "misinformation": 1,
    "revenge": 2,
    "punch": 2,
    "choke": 3,
    "strangle": 3,
    "weight": 1,
    "thin": 1,
}
REFUSAL_RE = re.compile(
    r"^\W*(i can(?:no|')t|i cannot|i won'?t|i'm sorry|i am sorry|sorry|i'm not able|"
    r"i am not able|i must decline|i'm unable|i am unable)"
)
STEP_RE = re.compile(r"(?m)^\s*(?:\d+[.)]|step\s+\d+|[-*•])\s+")
MODERATION_LABELS = frozenset({"safe", "unsafe", "review-needed"})


@dataclass(frozen=True, slots=True)
class Answer:
    label: str
    confidence: float


def profile_for(model: str) -> str | None:
    """Map a model name to a behaviour profile: ``cheap``, ``strong`` or unknown (None)."""
    name = model.lower()
    if "haiku" in name:
        return "cheap"
    if any(k in name for k in ("sonnet", "opus", "fable", "mythos")):
        return "strong"
    return None


def _jitter(text: str, salt: str) -> float:
    """A deterministic number in [-1, 1) from the text, so equal texts get equal answers."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**63 - 1.0


def classify(text: str, labels: list[str], profile: str) -> Answer:
    """The simulator's answering rule. See docs/SIMULATOR.md.

    For the moderation label set, both profiles score the text with a keyword lexicon:
    ``u`` is the weighted count of harm terms, ``m`` the count of mitigating terms (refusals,
    safety advice, discussion at a distance). The cheap profile ignores ``m`` beyond lowering
    its confidence. The strong profile knows more harm terms, subtracts ``m``, recognises an
    opening refusal, and counts step-by-step structure and long compliant answers, so it is
    right more often. Other label sets get a hash-chosen label.
    """
    words = WORD_RE.findall(text.lower())
    j = _jitter(text, profile)
    if not MODERATION_LABELS.issubset(labels):
        label = labels[int(abs(j) * 1e6) % len(labels)]
        base = 0.55 if profile == "cheap" else 0.8
        return Answer(label, round(min(1.0, base + 0.2 * abs(j)), 3))
    u = sum(UNSAFE_TERMS.get(w, 0) for w in words)
    m = sum(1 for w in words if w in MITIGATING_TERMS)
    if profile == "cheap":
        if u == 0:
            label, conf = "safe", (0.93 if m == 0 else 0.8)
        elif u >= 3:
            label = "unsafe"
            conf = 0.9 if (m == 0 and u >= 5) else (0.75 if m == 0 else 0.55)
        else:
            label, conf = "review-needed", 0.5
        if len(words) < 4:
            conf -= 0.15  # too little to go on
        if len(text) > 300:
            conf -= 0.2  # long answers hide what a keyword reader cannot see
        conf += 0.04 * j
    else:
        u += sum(STRONG_EXTRA_TERMS.get(w, 0) for w in words)
        refusal = bool(REFUSAL_RE.match(text.lower()))
        steps = min(3, len(STEP_RE.findall(text))) if u else 0
        complies = not refusal and len(text) > 300
        score = u + steps + (2 if complies else 0) - (8 if refusal else 0) - 0.5 * m
        if score >= 4:
            label, margin = "unsafe", score - 4
        elif score <= 1:
            label, margin = "safe", 1 - score
        else:
            label, margin = "review-needed", 1.0
        conf = 0.8 + 0.15 * min(1.0, margin / 4) + 0.03 * j
    return Answer(label, round(max(0.0, min(1.0, conf)), 3))


def tokens(text: str) -> int:
    """Deterministic token estimate: one token per four UTF-8 bytes, rounded up."""
    return math.ceil(len(text.encode()) / 4)


# -- runtime configuration ---------------------------------------------------------------------
@dataclass(slots=True)
class Latency:
    """``fixed:MS`` or ``uniform:LO_MS:HI_MS`` (or ``0``)."""

    low_ms: float = 0.0
    high_ms: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Latency:
        parts = spec.split(":")
        try:
            if parts == ["0"] or parts == [""]:
                return cls()
            if parts[0] == "fixed" and len(parts) == 2:
                return cls(float(parts[1]), float(parts[1]))
            if parts[0] == "uniform" and len(parts) == 3:
                lo, hi = float(parts[1]), float(parts[2])
                if lo <= hi:
                    return cls(lo, hi)
        except ValueError:
            pass
        raise ValueError(f"latency must be 0, fixed:MS or uniform:LO:HI, got {spec!r}")

    def sample_s(self, rng: random.Random) -> float:
        if self.high_ms <= 0:
            return 0.0
        return rng.uniform(self.low_ms, self.high_ms) / 1000.0


def parse_fault(spec: str) -> tuple[str, float]:
    """``KIND`` or ``KIND:RATE`` with RATE in [0, 1]."""
    kind, _, rate = spec.partition(":")
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    value = float(rate) if rate else 1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fault rate must be in [0, 1], got {rate!r}")
    return kind, value


@dataclass(slots=True)
class SimConfig:
    latency: Latency = field(default_factory=Latency)
    faults: dict[str, float] = field(default_factory=dict)
    retry_after_s: float = 1.0
    hang_s: float = 3600.0
    cache_min_tokens: int = 1024
    seed: int = 0


@dataclass(slots=True)
class SimState:
    config: SimConfig
    rng: random.Random
    cache: dict[tuple[str, str], float] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)


# -- HTTP ----------------------------------------------------------------------------------------
def _error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _system_blocks(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"type": "text", "text": system}]
    if isinstance(system, list):
        return [b for b in system if isinstance(b, dict)]
    return []


def _cache_usage(state: SimState, model: str, system: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(prefix tokens, cache-creation tokens, cache-read tokens) for the cached system prefix."""
    last = max((i for i, b in enumerate(system) if b.get("cache_control")), default=-1)
    if last < 0:
        return 0, 0, 0
    prefix = "".join(str(b.get("text", "")) for b in system[: last + 1])
    n = tokens(prefix)
    if n < state.config.cache_min_tokens:
        return 0, 0, 0  # too short to cache: the real API silently caches nothing
    ttl = 3600.0 if (system[last].get("cache_control") or {}).get("ttl") == "1h" else 300.0
    key = (model, hashlib.sha256(prefix.encode()).hexdigest())
    now = time.monotonic()
    hit = state.cache.get(key, 0.0) > now
    state.cache[key] = now + ttl
    return n, (0 if hit else n), (n if hit else 0)


def _pick_fault(state: SimState, request: web.Request, text: str) -> str | None:
    header = request.headers.get("x-sim-fault")
    if header:
        return header if header in FAULT_KINDS else None
    marker = MARKER_RE.search(text)
    if marker and marker.group(1) in FAULT_KINDS:
        return marker.group(1)
    for kind, rate in state.config.faults.items():
        if rate > 0 and state.rng.random() < rate:
            return kind
    return None


async def messages(request: web.Request) -> web.StreamResponse:
    state: SimState = request.app["state"]
    state.stats["requests"] += 1
    if request.headers.get("x-api-key") or request.headers.get("authorization"):
        state.stats["with_api_key"] += 1  # counted, never stored or logged
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "invalid_request_error", "request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "invalid_request_error", "request body must be an object")
    model = body.get("model")
    max_tokens = body.get("max_tokens")
    msgs = body.get("messages")
    if not isinstance(model, str) or not isinstance(max_tokens, int) or not isinstance(msgs, list):
        return _error(400, "invalid_request_error", "model, max_tokens and messages are required")
    if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "user":
        return _error(400, "invalid_request_error", "messages must end with a user turn")
    profile = profile_for(model)
    if profile is None:
        return _error(404, "not_found_error", f"model: {model}")
    user_text = _text_of(msgs[-1].get("content"))
    doc = DOCUMENT_RE.search(user_text)
    text = html.unescape(doc.group(1)) if doc else user_text

    latency = state.config.latency
    header_latency = request.headers.get("x-sim-latency-ms")
    if header_latency:
        latency = Latency(float(header_latency), float(header_latency))
    delay = latency.sample_s(state.rng)
    fault = _pick_fault(state, request, text)
    if fault:
        state.stats[f"fault:{fault}"] += 1
    if fault == "hang":
        await asyncio.sleep(state.config.hang_s)
    if delay:
        await asyncio.sleep(delay)
    if fault == "429":
        retry = state.config.retry_after_s
        return _error(
            429, "rate_limit_error", "simulated rate limit", {"retry-after": f"{retry:g}"}
        )
    if fault == "529":
        return _error(529, "overloaded_error", "simulated overload")
    if fault == "500":
        return _error(500, "api_error", "simulated internal error")

    labels: list[str] = ["safe", "unsafe", "review-needed"]
    schema = ((body.get("output_config") or {}).get("format") or {}).get("schema")
    if isinstance(schema, dict):
        enum = ((schema.get("properties") or {}).get("label") or {}).get("enum")
        if isinstance(enum, list) and enum and all(isinstance(x, str) for x in enum):
            labels = enum
    answer = classify(text, labels, profile)
    if fault == "bad-schema":
        out = orjson.dumps({"label": answer.label}).decode()
    elif fault == "bad-label":
        out = orjson.dumps({"label": "definitely-not-a-label", "confidence": 1.0}).decode()
    else:
        out = orjson.dumps({"label": answer.label, "confidence": answer.confidence}).decode()

    system = _system_blocks(body.get("system"))
    all_input = "".join(str(b.get("text", "")) for b in system) + "".join(
        _text_of(m.get("content")) for m in msgs if isinstance(m, dict)
    )
    schema_tokens = tokens(orjson.dumps(schema).decode()) if schema else 0
    prefix, created, read = _cache_usage(state, model, system)
    input_tokens = 8 + tokens(all_input) + schema_tokens - prefix
    out_tokens = tokens(out)
    stop_reason = "end_turn"
    if out_tokens > max_tokens:
        out = out[: max_tokens * 4]
        out_tokens = max_tokens
        stop_reason = "max_tokens"
    state.stats["answered"] += 1
    message = {
        "id": "msg_sim_" + hashlib.sha256(f"{model}:{text}".encode()).hexdigest()[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": out}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": out_tokens,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
        },
    }
    return web.Response(body=orjson.dumps(message), content_type="application/json")


async def get_config(request: web.Request) -> web.Response:
    state: SimState = request.app["state"]
    cfg = state.config
    return web.json_response(
        {
            "latency_ms": [cfg.latency.low_ms, cfg.latency.high_ms],
            "faults": cfg.faults,
            "retry_after_s": cfg.retry_after_s,
            "stats": dict(state.stats),
        }
    )


async def set_config(request: web.Request) -> web.Response:
    """Change faults and latency while running (e.g. a 60 s outage in a reliability test)."""
    state: SimState = request.app["state"]
    try:
        body = orjson.loads(await request.read())
        if "latency" in body:
            state.config.latency = Latency.parse(str(body["latency"]))
        if "faults" in body:
            faults = dict(parse_fault(f"{k}:{v}") for k, v in dict(body["faults"]).items())
            state.config.faults = faults
        if "retry_after_s" in body:
            state.config.retry_after_s = float(body["retry_after_s"])
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        return _error(400, "invalid_request_error", str(exc))
    return await get_config(request)


def make_app(config: SimConfig) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["state"] = SimState(config=config, rng=random.Random(config.seed))
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/_sim/config", get_config)
    app.router.add_post("/_sim/config", set_config)
    return app


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Run until cancelled; print the bound URL on stdout first (tests parse it)."""
    runner = web.AppRunner(make_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    print(f"escalator-sim listening on http://{host}:{bound}", flush=True)  # noqa: T201
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def spawn(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``escalator sim`` in its own process on a free port; return it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "escalator", "sim", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://\S+", line)
    if not match:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"simulator did not start: {line!r}")
    # Keep reading its output. Nobody else reads this pipe: once its 64 KiB buffer fills (a
    # crash loop's reset connections log enough in minutes), the simulator blocks on write
    # and stops answering every caller.
    drain = threading.Thread(target=_drain, args=(proc.stdout,), daemon=True)
    drain.start()
    proc.escalator_drain = drain  # type: ignore[attr-defined]
    return proc, match.group(0)


def _drain(stream: IO[str]) -> None:
    try:
        for _ in stream:
            pass
    except (OSError, ValueError):  # closed by terminate()
        return


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; close the stdout pipe if there is one."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    drain = getattr(proc, "escalator_drain", None)
    if drain is not None:
        drain.join(timeout_s)  # the pipe is at EOF once the process has exited
    if proc.stdout is not None:
        proc.stdout.close()
