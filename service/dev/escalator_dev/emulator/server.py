"""An emulator of the Messages API as Anthropic documents it (``escalator sim``).

It stands in for Claude where no API key (or no network) exists: in tests, in CI, in the demo.
Everything measured against it is *simulated* and is labelled so. It is not a model of
Escalator's assumptions: each behaviour follows a documentation page, listed with its source
in docs/SIMULATOR.md ("Conformance"); where the docs are silent or disagree it takes the
stricter reading. The per-model facts are one table (``models.py``); the rules that
produce 400s, thinking, token counts and rate-limit buckets are in ``rules.py``; the
organisation's buckets in ``limits.py``, prompt caching in ``cache.py``, fallback credit in
``credits.py``, and the Message Batches API in ``batches.py`` (the store and its clock) and
``batch_routes.py`` (its endpoints), which answer every batch item through :func:`answer`,
the same path as ``POST /v1/messages``.

What it serves:
- ``POST /v1/messages``: authentication (401), ``anthropic-version``, per-model validation
  (the documented 400s: sampling parameters, prefill, thinking types and effort, unsupported
  schema keywords, forced tool use), unknown and retired models (404); thinking when the
  request lets the model think, consuming ``max_tokens``; refusals (``stop_reason:
  "refusal"`` with ``stop_details``); enum values in another capitalization at a
  configurable rate; prompt caching per model minimum, readable only once the writing
  response has been sent; per-model rate-limit buckets with ``anthropic-ratelimit-*``
  headers on every response and 429 + ``retry-after`` when one is empty; ``request-id``.
- ``GET /v1/models/{id}`` and ``GET /v1/models``: ModelInfo with capabilities and lifecycle.
- ``/v1/messages/batches``: create, list, retrieve, cancel, delete, results (JSONL), on an
  emulated clock (``batches.py``).
- ``GET``/``POST /_sim/config``: faults, latency, retirements, keys and limits, live.

The answering rule (deterministic from the text; the emulator never sees gold labels) is
documented in ``docs/SIMULATOR.md`` and implemented in :func:`classify`.

Faults are injected per run (``--fault KIND:RATE``, ``--latency``), per request (header
``x-sim-fault: KIND``, ``x-sim-latency-ms: N``), by a marker in the text (``[[sim:KIND]]``, so
that a pipeline test can make one record fail every time), per model, or at run time through
``POST /_sim/config``. KIND is one of :data:`FAULT_KINDS`.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import IO, Any

import orjson
from aiohttp import web

from escalator_dev.emulator import batch_routes, cache, credits
from escalator_dev.emulator.batches import (
    BatchSettings,
    BatchStore,
    Hung,
    parse_batch_fault,
    parse_batch_limits,
)
from escalator_dev.emulator.credits import Memory
from escalator_dev.emulator.limits import Charge, Exceeded, Limits
from escalator_dev.emulator.models import DEFAULT_LIMITS, TIERS, ModelSpec, model_index
from escalator_dev.emulator.rules import (
    API_VERSIONS,
    CREDIT_BETAS,
    ApiError,
    RateLimiter,
    Settings,
    bad_request,
    check_prompt_length,
    text_of,
    thinking_tokens,
    tokens,
    unit,
    validate,
)

#: Transient (429, 529, 500, hang), answer (bad-schema, bad-label, refuse), account
#: (spend-limit 400, billing 402, spend-cap/contract-cap 429, ramp 429, auth 401,
#: permission 403) and request (schema-rejected 400) faults.
FAULT_KINDS = (
    "429",
    "529",
    "500",
    "hang",
    "bad-schema",
    "bad-label",
    "refuse",
    "spend-limit",
    "billing",
    "spend-cap",
    "contract-cap",
    "ramp",
    "auth",
    "permission",
    "schema-rejected",
)
DOCUMENT_RE = re.compile(r"<document>(.*?)</document>", re.DOTALL)
MARKER_RE = re.compile(r"\[\[sim:([a-z0-9-]+)(?::([a-z_]+))?\]\]")
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


#: Words whose presence makes the emulated safety classifiers decline, by stop_details
#: category. The docs say classifiers "can decline a request" on the 5.x models; which texts
#: they decline is not documented, so this lexicon is the emulator's (configurable).
REFUSAL_LEXICON: dict[str, str] = {
    "bioweapon": "bio",
    "bioweapons": "bio",
    "pathogen": "bio",
    "anthrax": "bio",
    "ricin": "bio",
    "sarin": "bio",
    "weaponize": "bio",
    "weaponized": "bio",
    "ransomware": "cyber",
    "keylogger": "cyber",
    "botnet": "cyber",
    "shellcode": "cyber",
    "rootkit": "cyber",
}
REFUSAL_EXPLANATIONS = {
    "bio": "This request was declined because it could enable biological harm.",
    "cyber": "This request was declined because it could enable cyber harm.",
    "general_harms": "This request was declined because it could be related to harm.",
}
#: Extra input the API adds for structured outputs ("an additional system prompt explaining
#: the expected output format"); the size is the emulator's.
FORMAT_PROMPT_TOKENS = 40


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


def parse_lexicon(raw: object) -> dict[str, str]:
    """``{word: category}`` (lower-case words) for the refusal classifier."""
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ValueError("a refusal lexicon is a JSON object of word: category")
    return {k.lower(): v for k, v in raw.items()}


def parse_limits(spec: str) -> tuple[int, int, int]:
    """``RPM:ITPM:OTPM`` or a tier name (start, build, scale, custom)."""
    if spec in TIERS:
        return TIERS[spec]
    parts = spec.split(":")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"rate limits must be RPM:ITPM:OTPM or one of {', '.join(TIERS)}")
    return int(parts[0]), int(parts[1]), int(parts[2])


@dataclass(slots=True)
class SimConfig:
    latency: Latency = field(default_factory=Latency)
    faults: dict[str, float] = field(default_factory=dict)
    #: Faults for one model only: {model id: {kind: rate}}.
    model_faults: dict[str, dict[str, float]] = field(default_factory=dict)
    retry_after_s: float = 1.0
    hang_s: float = 3600.0
    seed: int = 0
    #: The only key accepted (None: any non-empty key).
    api_key: str | None = None
    revoked_keys: set[str] = field(default_factory=set)
    #: Models retired at run time (on top of the table's retirement dates).
    retired: set[str] = field(default_factory=set)
    #: (RPM, ITPM, OTPM) per rate-limit group, named by the group (``haiku-5``) or by any
    #: of its models; groups not named get ``default_limits``.
    limits: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    default_limits: tuple[int, int, int] = DEFAULT_LIMITS
    #: The workspace's own limits per group (named likewise; none by default). Its input
    #: limit counts cache reads (``input_tokens_per_minute``); the organisation's does not.
    workspace_limits: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    #: A fallback credit token expires this long after its refusal (documented: 5 minutes).
    credit_ttl_s: float = 300.0
    #: Fraction of answers whose label comes back in another capitalization.
    enum_case_rate: float = 0.03
    refusals: bool = True
    #: word -> stop_details category; the built-in lexicon when None.
    refusal_lexicon: dict[str, str] | None = None
    #: The emulator's date, for lifecycles (None: today, UTC).
    today: date | None = None
    #: The Message Batches API: processing time, faults, limits (``batches.py``).
    batch: BatchSettings = field(default_factory=BatchSettings)


@dataclass(slots=True)
class SimState:
    config: SimConfig
    rng: random.Random
    models: dict[str, ModelSpec] = field(default_factory=model_index)
    cache: dict[tuple[str, ...], cache.CacheEntry] = field(default_factory=dict)
    limiters: dict[str, Limits] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    serial: int = 0
    memory: Memory = field(default_factory=Memory)
    batches: BatchStore = field(default_factory=BatchStore)

    def today(self) -> date:
        return self.config.today or datetime.now(UTC).date()

    def _configured(
        self, table: dict[str, tuple[int, int, int]], spec: ModelSpec
    ) -> tuple[int, int, int] | None:
        if spec.group in table:
            return table[spec.group]
        for model, value in table.items():
            named = self.models.get(model)
            if named is not None and named.group == spec.group:
                return value
        return None

    def limiter(self, spec: ModelSpec) -> Limits:
        """The organisation's (and workspace's) buckets of the model's rate-limit group."""
        limits = self.limiters.get(spec.group)
        if limits is None:
            org = self._configured(self.config.limits, spec) or self.config.default_limits
            ws = self._configured(self.config.workspace_limits, spec)
            limits = self.limiters[spec.group] = Limits(
                RateLimiter(*org), RateLimiter(*ws) if ws is not None else None
            )
        return limits

    def request_id(self) -> str:
        self.serial += 1
        return f"req_sim_{self.serial:012x}{self.rng.getrandbits(32):08x}"


# -- HTTP ----------------------------------------------------------------------------------------
STATE = web.AppKey("state", SimState)


def _error_response(error: ApiError, request_id: str, headers: dict[str, str]) -> web.Response:
    inner: dict[str, Any] = {"type": error.kind, "message": error.message}
    if error.error_code is not None:
        inner["details"] = {"error_code": error.error_code}
    body = {"type": "error", "error": inner, "request_id": request_id}
    return web.Response(
        status=error.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={**headers, **error.headers, "request-id": request_id},
    )


def _system_blocks(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"type": "text", "text": system}]
    if isinstance(system, list):
        return [b for b in system if isinstance(b, dict)]
    return []


def _authenticate(state: SimState, request: web.Request) -> str:
    """The request's key, if it may call (a hash of it binds fallback credit tokens to it)."""
    key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if key is None and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    if not key:
        raise ApiError(401, "authentication_error", "x-api-key header is required")
    state.stats["with_api_key"] += 1  # counted, never logged
    wanted = state.config.api_key
    if (wanted is not None and key != wanted) or key in state.config.revoked_keys:
        raise ApiError(401, "authentication_error", "invalid x-api-key")
    return key


def _version(request: web.Request) -> str:
    version = request.headers.get("anthropic-version")
    if not version:
        raise bad_request("anthropic-version: header is required")
    if version not in API_VERSIONS:
        raise bad_request(f"anthropic-version: {version!r} is not a valid version")
    return version


def _caller(state: SimState, request: web.Request) -> tuple[str, str, frozenset[str]]:
    """What every API endpoint checks first: the key, ``anthropic-version``, a JSON body;
    the key, the version and the betas asked for."""
    api_key = _authenticate(state, request)
    version = _version(request)
    _content_type(request)
    betas = frozenset(
        b.strip() for b in request.headers.get("anthropic-beta", "").split(",") if b.strip()
    )
    return api_key, version, betas


def _content_type(request: web.Request) -> None:
    """A body must say it is JSON: "You will need to send the content-type: application/json
    header in requests" (API overview, "Content types"). The docs do not say what a request
    without it gets; the stricter reading, a 400. A request with no body (a cancel) needs none."""
    if not request.can_read_body:
        return
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise bad_request("content-type: must be application/json")


def _model(state: SimState, model: Any) -> ModelSpec:
    if not isinstance(model, str):
        raise bad_request("model: Field required")
    spec = state.models.get(model)
    if spec is None:
        raise ApiError(404, "not_found_error", f"model: {model}")
    if model in state.config.retired or spec.lifecycle(state.today()) == "retired":
        # Model deprecations: "Requests to retired models will fail." (404, as for an
        # unknown id: the docs give no other status.)
        raise ApiError(404, "not_found_error", f"model: {model}")
    return spec


def _pick_fault(
    state: SimState, headers: Mapping[str, str], text: str, model: str
) -> tuple[str | None, str | None]:
    """(kind, argument) of the fault for this request, if any."""
    header = headers.get("x-sim-fault")
    if header:
        return (header if header in FAULT_KINDS else None), None
    marker = MARKER_RE.search(text)
    if marker and marker.group(1) in FAULT_KINDS:
        return marker.group(1), marker.group(2)
    for faults in (state.config.model_faults.get(model, {}), state.config.faults):
        for kind, rate in faults.items():
            if rate > 0 and state.rng.random() < rate:
                return kind, None
    return None, None


def _next_month(today: date) -> str:
    first = date(today.year + (today.month == 12), today.month % 12 + 1, 1)
    return first.isoformat()


def _fault_error(kind: str, retry_after_s: float, today: date) -> ApiError | None:
    """The documented response of each injected fault (None: not an HTTP error)."""
    # retry-after is whole seconds, as the API sends it.
    retry = {"retry-after": str(math.ceil(retry_after_s))}
    resume = f"You will regain access on {_next_month(today)} at 00:00 UTC."
    if kind == "429":
        return ApiError(
            429,
            "rate_limit_error",
            "This request would exceed your account's rate limit. Please try again later.",
            headers=retry,
        )
    if kind == "529":
        return ApiError(529, "overloaded_error", "Overloaded")
    if kind == "500":
        return ApiError(500, "api_error", "Internal server error")
    if kind == "spend-limit":
        return bad_request(f"You have reached your specified API usage limits. {resume}")
    if kind == "billing":
        return ApiError(
            402, "billing_error", "Your credit balance is too low to access the Anthropic API."
        )
    if kind == "spend-cap":
        return ApiError(
            429,
            "rate_limit_error",
            "You have reached your API usage limits: your organization has crossed its monthly "
            f"API usage threshold, set based on your organization's API tier. {resume}",
            error_code="enforced_spend_limit_reached",
        )
    if kind == "contract-cap":
        return ApiError(
            429,
            "rate_limit_error",
            f"You have reached the spend limit of your contract. {resume}",
            error_code="contract_spend_limit_reached",
        )
    if kind == "ramp":
        return ApiError(
            429,
            "rate_limit_error",
            "This request would exceed a ramp limit, which caps how fast usage can grow.",
            headers=retry,
            error_code="ramp_limit_exceeded",
        )
    if kind == "auth":
        return ApiError(401, "authentication_error", "invalid x-api-key")
    if kind == "schema-rejected":
        # What a schema with numerical constraints gets (the real message, from a live 400).
        return bad_request(
            "output_config.format.schema: For 'number' type, properties maximum, minimum are "
            "not supported"
        )
    if kind == "permission":
        return ApiError(
            403, "permission_error", "Your API key does not have permission to use this model."
        )
    return None


def _refusal_category(state: SimState, spec: ModelSpec, text: str) -> str | None:
    if not (state.config.refusals and spec.refuses):
        return None
    lexicon = state.config.refusal_lexicon
    if lexicon is None:
        lexicon = REFUSAL_LEXICON
    for word in WORD_RE.findall(text.lower()):
        category = lexicon.get(word)
        if category is not None:
            return category
    return None


async def messages(request: web.Request) -> web.StreamResponse:
    state: SimState = request.app[STATE]
    state.stats["requests"] += 1
    request_id = state.request_id()
    limiter: Limits | None = None
    try:
        api_key, version, betas = _caller(state, request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise bad_request("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad_request("request body must be an object")
        spec = _model(state, body.get("model"))
        limiter = state.limiter(spec)
        message = await answer(state, spec, body, request.headers, api_key, version, betas)
        headers = limiter.headers()  # read once the response ends (the output is settled)
    except ApiError as exc:
        state.stats[f"status:{exc.status}"] += 1
        # Rate-limit headers on errors too, once the model (and so its limits) is known.
        headers = limiter.headers() if limiter is not None else {}
        return _error_response(exc, request_id, headers)
    return web.Response(
        body=orjson.dumps(message),
        content_type="application/json",
        headers={**headers, "request-id": request_id},
    )


async def answer(
    state: SimState,
    spec: ModelSpec,
    body: dict[str, Any],
    headers: Mapping[str, str],
    api_key: str,
    version: str,
    betas: frozenset[str],
    *,
    batch: bool = False,
) -> dict[str, Any]:
    """The one answering path: validate ``body`` for ``spec`` and answer it (a Message), or
    raise the documented :class:`ApiError`. ``POST /v1/messages`` and every item of a Message
    Batch come through here; a batch item (``batch``) has no latency of its own, is not charged
    on the real-time buckets ("The Message Batches API has its own rate limits") and reports
    ``usage.service_tier: "batch"``."""
    settings = validate(body, spec, version, betas)
    call = Call(headers, spec, body, settings, betas, api_key, batch)
    return await _answer(state, call, state.limiter(spec))


async def answer_batch_item(
    state: SimState,
    body: Any,
    headers: Mapping[str, str],
    api_key: str,
    version: str,
    betas: frozenset[str],
) -> dict[str, Any]:
    """One request of a batch, through :func:`answer` (its ``params``, as sent)."""
    if not isinstance(body, dict):
        raise bad_request("params: must be an object")
    spec = _model(state, body.get("model"))
    return await answer(state, spec, body, headers, api_key, version, betas, batch=True)


@dataclass(frozen=True, slots=True)
class Call:
    """One valid request, as the emulator answers it."""

    headers: Mapping[str, str]
    spec: ModelSpec
    body: dict[str, Any]
    settings: Settings
    betas: frozenset[str]
    api_key: str
    #: An item of a Message Batch (no latency, batch limits, ``service_tier: "batch"``).
    batch: bool = False

    @property
    def text(self) -> str:
        """The text between ``<document>`` tags (or the whole last user turn)."""
        user_text = text_of(self.body["messages"][-1].get("content"))
        doc = DOCUMENT_RE.search(user_text)
        return html.unescape(doc.group(1)) if doc else user_text


@dataclass(slots=True)
class Reply:
    """One model's answer to a call: content, stop, usage, and the charge it holds."""

    spec: ModelSpec
    content: list[dict[str, Any]]
    stop_reason: str
    stop_details: dict[str, Any] | None
    out_tokens: int
    thought: int
    plan: cache.CachePlan
    uncached: int
    charge: Charge


def _input(state: SimState, call: Call, spec: ModelSpec) -> tuple[cache.CachePlan, int]:
    """(cache plan, input tokens not covered by the cache) of ``call`` on ``spec``."""
    body, settings = call.body, call.settings
    all_input = "".join(str(b.get("text", "")) for b in _system_blocks(body.get("system")))
    all_input += "".join(text_of(m.get("content")) for m in body["messages"])
    factor = spec.tokenizer_factor
    schema = settings.schema
    schema_tokens = (
        (tokens(orjson.dumps(schema).decode(), factor) + FORMAT_PROMPT_TOKENS) if schema else 0
    )
    total_input = 8 + tokens(all_input, factor) + schema_tokens
    check_prompt_length(spec, total_input)
    plan = cache.plan(spec, body, settings, state.cache, time.monotonic())
    return plan, total_input - plan.covered


def _admit(
    state: SimState,
    spec: ModelSpec,
    plan: cache.CachePlan,
    uncached: int,
    max_tokens: int,
    batch: bool = False,
) -> Charge | Exceeded:
    """Charge the call on its group's (and the workspace's) buckets when it is admitted:
    uncached input and cache writes, cache reads on the workspace's limit only. A batch item
    is charged nothing here: batches have their own limits (``batches.py``)."""
    if batch:
        state.stats[f"batch_answered:{spec.id}"] += 1
        return Charge((), max_tokens)
    outcome = state.limiter(spec).admit(uncached + plan.created, plan.read, max_tokens)
    if isinstance(outcome, Exceeded):
        state.stats["rate_limited"] += 1
        state.stats[f"rate_limited:{spec.id}"] += 1
        state.stats[f"rate_limited:{outcome.owner}"] += 1
        return outcome
    state.stats[f"charged_requests:{spec.id}"] += 1
    state.stats[f"charged_input_tokens:{spec.id}"] += uncached + plan.created
    state.stats[f"charged_cache_read_tokens:{spec.id}"] += plan.read
    return outcome


def _rate_limited(spec: ModelSpec, exceeded: Exceeded) -> ApiError:
    return ApiError(
        429,
        "rate_limit_error",
        f"This request would exceed your {exceeded.owner}'s rate limit for "
        f"{exceeded.kind.replace('-', ' ')} per minute ({spec.group} models). Please try "
        "again later.",
        headers={"retry-after": str(exceeded.retry_after_s)},
    )


async def _answer(state: SimState, call: Call, limiter: Limits) -> dict[str, Any]:
    spec, settings = call.spec, call.settings
    text = call.text
    fault, argument = _pick_fault(state, call.headers, text, spec.id)
    if fault:
        state.stats[f"fault:{fault}"] += 1
    if fault == "hang" and call.batch:
        raise Hung  # the item never finishes: it expires with its batch
    latency = state.config.latency
    header_latency = call.headers.get("x-sim-latency-ms")
    if header_latency:
        latency = Latency(float(header_latency), float(header_latency))
    # A batch's processing time is the batch's (``--batch-latency``), not each item's.
    delay = 0.0 if call.batch else latency.sample_s(state.rng)
    error = _fault_error(fault, state.config.retry_after_s, state.today()) if fault else None
    if error is not None:
        # Account and transient faults: after the latency, and charged nothing.
        if delay:
            await asyncio.sleep(delay)
        raise error
    credit = _presented_credit(state, call)
    plan, uncached = _input(state, call, spec)
    admitted = _admit(state, spec, plan, uncached, settings.max_tokens, call.batch)
    if isinstance(admitted, Exceeded):
        raise _rate_limited(spec, admitted)  # a token presented is still good for a retry
    if credit is not None and credit.reason is None and settings.credit_token is not None:
        state.memory.consume(settings.credit_token)
    try:
        if fault == "hang":
            await asyncio.sleep(state.config.hang_s)
        if delay:
            await asyncio.sleep(delay)
        reply = _reply(state, call, spec, fault, argument, plan, uncached, admitted)
        if reply.stop_reason == "refusal" and isinstance(settings.fallbacks, tuple):
            reply = _fall_back(state, call, reply, settings.fallbacks)
    except BaseException:
        admitted.settle(0)  # the caller went away (a timeout): no output was produced
        raise
    # The output reservation was held until now: the response ends here.
    reply.charge.settle(reply.out_tokens)
    state.stats[f"charged_output_tokens:{reply.spec.id}"] += reply.out_tokens
    return _respond(state, call, reply, credit)


def _presented_credit(state: SimState, call: Call) -> credits.Redemption | None:
    """Check a presented fallback credit token before anything is charged: a malformed one
    is a 400 in both modes, a failing one a 400 in strict mode."""
    token = call.settings.credit_token
    if token is None:
        return None
    if not state.memory.known(token):
        raise bad_request("fallback_credit_token: malformed or unknown token")
    state.memory.token_ttl_s = state.config.credit_ttl_s
    outcome = state.memory.redeem(
        token,
        model=call.spec.id,
        eligible=call.spec.id in _current(state),
        api_key=call.api_key,
        body=call.body,
        betas=bool(call.betas & CREDIT_BETAS),
    )
    state.stats[f"fallback_credit:{outcome.reason or 'redeemed'}"] += 1
    if outcome.reason is not None and call.settings.credit_mode == "strict":
        raise bad_request(f"fallback_credit_token: not redeemable ({outcome.reason})")
    return outcome


def _current(state: SimState) -> set[str]:
    """Models that may be the target of a fallback: those not retired."""
    today = state.today()
    return {
        s.id
        for s in state.models.values()
        if s.lifecycle(today) != "retired" and s.id not in state.config.retired
    }


def _reply(
    state: SimState,
    call: Call,
    spec: ModelSpec,
    fault: str | None,
    argument: str | None,
    plan: cache.CachePlan,
    uncached: int,
    charge: Charge,
) -> Reply:
    settings = call.settings
    text = call.text
    factor = spec.tokenizer_factor
    if fault == "refuse":
        refusal: str | None = argument or "general_harms"
    else:
        refusal = _refusal_category(state, spec, text)
    if refusal is not None:
        content, out_tokens, stop_reason = _refusal_content(factor)
        refused: dict[str, Any] = {
            "type": "refusal",
            "category": refusal,
            "explanation": REFUSAL_EXPLANATIONS.get(refusal),
        }
        thought = 0
        state.stats["refusals"] += 1
        if call.betas & CREDIT_BETAS:
            # Every refusing model of the table mints one here (docs/SIMULATOR.md).
            refused["fallback_credit_token"] = state.memory.mint(
                spec.id, call.api_key, call.body, plan.covered
            )
            refused["fallback_has_prefill_claim"] = False  # output_config.format: same body
            refused["recommended_model"] = None
            state.stats["fallback_credits_minted"] += 1
        details: dict[str, Any] | None = refused
    else:
        content, out_tokens, thought, stop_reason = _content(state, spec, text, settings, fault)
        details = None
        if stop_reason == "max_tokens" and thought >= settings.max_tokens:
            state.stats["max_tokens_in_thinking"] += 1
    return Reply(spec, content, stop_reason, details, out_tokens, thought, plan, uncached, charge)


def _fall_back(state: SimState, call: Call, refused: Reply, models: tuple[str, ...]) -> Reply:
    """Server-side fallback: the same request on each fallback model in turn. One whose rate
    limit is exhausted stops the chain: the refusal stands, naming it in
    ``recommended_model`` ("Populated when a fallback attempt could not be made")."""
    current = refused
    for model in models:
        spec = state.models.get(model)
        if spec is None or spec.id not in _current(state):
            raise bad_request(f"fallbacks: model: {model}")
        plan, uncached = _input(state, call, spec)
        admitted = _admit(state, spec, plan, uncached, call.settings.max_tokens, call.batch)
        if isinstance(admitted, Exceeded):
            assert current.stop_details is not None
            current.stop_details["recommended_model"] = spec.id
            return current
        current.charge.settle(current.out_tokens)
        nxt = _reply(state, call, spec, None, None, plan, uncached, admitted)
        category = (current.stop_details or {}).get("category")
        seam = {
            "type": "fallback",
            "from": {"model": current.spec.id},
            "to": {"model": spec.id},
            "trigger": {"type": "refusal", "category": category},
        }
        nxt.content = [seam, *nxt.content]
        current = nxt
        if nxt.stop_reason != "refusal":
            return nxt
    return current


def _respond(
    state: SimState, call: Call, reply: Reply, credit: credits.Redemption | None
) -> dict[str, Any]:
    spec, settings, plan = reply.spec, call.settings, reply.plan
    cache.settle(plan, state.cache, time.monotonic())
    state.stats["cache_reads"] += bool(plan.read)
    state.stats["cache_writes"] += bool(plan.created)
    state.stats["answered"] += 1
    created, read = plan.created, plan.read
    if credit is not None and credit.reason is None:
        # Redeemed: the writes of the prefix warm on the refused model are billed as reads.
        moved = min(created, credit.credited)
        created, read = created - moved, read + moved
    message_id = "msg_sim_" + hashlib.sha256(f"{spec.id}:{call.text}".encode()).hexdigest()[:24]
    usage: dict[str, Any] = {
        "input_tokens": reply.uncached,
        "output_tokens": reply.out_tokens,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": created if plan.ttl == "5m" else 0,
            "ephemeral_1h_input_tokens": created if plan.ttl == "1h" else 0,
        },
        "output_tokens_details": {"thinking_tokens": reply.thought},
        # Pricing: batch usage "is charged at 50% of the standard API prices".
        "service_tier": "batch" if call.batch else "standard",
        "inference_geo": settings.geo if spec.inference_geo else None,
        "speed": settings.speed,
    }
    if credit is not None:
        usage["fallback_credit"] = credit.usage()
    print_ = credits.fingerprint(spec.id, settings.speed, call.body, plan.covered)
    diagnostics = None
    if settings.diagnostics:
        reason = state.memory.cache_miss_reason(settings.previous_message_id, print_, plan.read)
        diagnostics = None if reason is None else {"cache_miss_reason": reason}
    state.memory.remember(message_id, print_)
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": spec.id,
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "stop_details": reply.stop_details,
        "usage": usage,
        "diagnostics": diagnostics,
    }
    return message


def _refusal_content(factor: float) -> tuple[list[dict[str, Any]], int, str]:
    """A refusal can cut the answer off mid-way: the partial text does not match the schema."""
    partial = '{"label": "'
    return [{"type": "text", "text": partial}], tokens(partial, factor), "refusal"


def _content(
    state: SimState, spec: ModelSpec, text: str, settings: Settings, fault: str | None
) -> tuple[list[dict[str, Any]], int, int, str]:
    """(content blocks, output tokens, thinking tokens, stop_reason)."""
    labels: list[str] = ["safe", "unsafe", "review-needed"]
    schema = settings.schema
    if isinstance(schema, dict):
        enum = ((schema.get("properties") or {}).get("label") or {}).get("enum")
        if isinstance(enum, list) and enum and all(isinstance(x, str) for x in enum):
            labels = enum
    answer = classify(text, labels, spec.answers)
    label = answer.label
    if unit(text, spec.id + ":case") < state.config.enum_case_rate:
        # Structured outputs may return an enum value in another capitalization.
        label = label.upper() if unit(text, "which-case") < 0.5 else label.capitalize()
        state.stats["case_varied"] += 1
    if fault == "bad-schema":
        out = orjson.dumps({"label": label}).decode()
    elif fault == "bad-label":
        out = orjson.dumps({"label": "definitely-not-a-label", "confidence": 1.0}).decode()
    else:
        out = orjson.dumps({"label": label, "confidence": answer.confidence}).decode()
    factor = spec.tokenizer_factor
    thought = thinking_tokens(text, settings)
    blocks: list[dict[str, Any]] = []
    budget = settings.max_tokens
    if thought:
        summary = (
            "" if settings.display == "omitted" else "Weighing the document against the labels."
        )
        signature = hashlib.sha256(f"sig:{spec.id}:{text}".encode()).hexdigest()
        blocks.append({"type": "thinking", "thinking": summary, "signature": signature})
        if thought >= budget:
            # Thinking used the whole max_tokens: no text at all.
            return blocks, budget, budget, "max_tokens"
    out_tokens = tokens(out, factor)
    room = budget - thought
    if out_tokens > room:
        cut = out[: max(0, int(room * 4 / factor))]
        blocks.append({"type": "text", "text": cut})
        return blocks, budget, thought, "max_tokens"
    blocks.append({"type": "text", "text": out})
    return blocks, thought + out_tokens, thought, "end_turn"


def _models_request(request: web.Request) -> tuple[SimState, str, web.Response | None]:
    """The Models API's prelude: state, a request id, and the error response if the key fails."""
    state: SimState = request.app[STATE]
    request_id = state.request_id()
    try:
        _authenticate(state, request)
    except ApiError as exc:
        return state, request_id, _error_response(exc, request_id, {})
    return state, request_id, None


async def get_model(request: web.Request) -> web.Response:
    state, request_id, refused = _models_request(request)
    if refused is not None:
        return refused
    name = request.match_info["model"]
    spec = state.models.get(name)
    if spec is None:
        return _error_response(ApiError(404, "not_found_error", f"model: {name}"), request_id, {})
    info = spec.info(state.today(), retired=name in state.config.retired)
    return web.json_response(info, headers={"request-id": request_id})


async def list_models(request: web.Request) -> web.Response:
    state, request_id, refused = _models_request(request)
    if refused is not None:
        return refused
    specs = sorted({s.id: s for s in state.models.values()}.values(), key=lambda s: s.released)
    data = [s.info(state.today(), retired=s.id in state.config.retired) for s in reversed(specs)]
    body = {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
    return web.json_response(body, headers={"request-id": request_id})


async def get_config(request: web.Request) -> web.Response:
    state: SimState = request.app[STATE]
    cfg = state.config
    return web.json_response(
        {
            "latency_ms": [cfg.latency.low_ms, cfg.latency.high_ms],
            "faults": cfg.faults,
            "model_faults": cfg.model_faults,
            "retry_after_s": cfg.retry_after_s,
            "retired": sorted(cfg.retired),
            "limits": {k: list(v) for k, v in cfg.limits.items()},
            "default_limits": list(cfg.default_limits),
            "workspace_limits": {k: list(v) for k, v in cfg.workspace_limits.items()},
            "credit_ttl_s": cfg.credit_ttl_s,
            "enum_case_rate": cfg.enum_case_rate,
            "refusals": cfg.refusals,
            "refusal_lexicon": cfg.refusal_lexicon,
            "batch_latency_s": cfg.batch.latency_s,
            "batch_cancel_s": cfg.batch.cancel_s,
            "batch_faults": cfg.batch.faults,
            "batch_limits": [cfg.batch.rpm, cfg.batch.queue],
            "batch_max_bytes": cfg.batch.max_bytes,
            "batch_advance_s": state.batches.clock.advance_s,
            "batch_queue": state.batches.queued(),
            "stats": dict(state.stats),
        }
    )


async def set_config(request: web.Request) -> web.Response:
    """Change faults, latency, retirements, keys and limits while running (a 60 s outage in a
    reliability test, a revoked key, a model retired mid-run)."""
    state: SimState = request.app[STATE]
    cfg = state.config
    try:
        body = orjson.loads(await request.read())
        if "latency" in body:
            cfg.latency = Latency.parse(str(body["latency"]))
        if "faults" in body:
            cfg.faults = dict(parse_fault(f"{k}:{v}") for k, v in dict(body["faults"]).items())
        if "model_faults" in body:
            cfg.model_faults = {
                str(model): dict(parse_fault(f"{k}:{v}") for k, v in dict(faults).items())
                for model, faults in dict(body["model_faults"]).items()
            }
        if "retry_after_s" in body:
            cfg.retry_after_s = float(body["retry_after_s"])
        if "retired" in body:
            cfg.retired = {str(m) for m in body["retired"]}
        if "revoked_keys" in body:
            cfg.revoked_keys = {str(k) for k in body["revoked_keys"]}
        if "api_key" in body:
            cfg.api_key = None if body["api_key"] is None else str(body["api_key"])
        if "limits" in body:
            cfg.limits = {str(m): parse_limits(str(v)) for m, v in dict(body["limits"]).items()}
            state.limiters.clear()
        if "default_limits" in body:
            cfg.default_limits = parse_limits(str(body["default_limits"]))
            state.limiters.clear()
        if "workspace_limits" in body:
            cfg.workspace_limits = {
                str(m): parse_limits(str(v)) for m, v in dict(body["workspace_limits"]).items()
            }
            state.limiters.clear()
        if "credit_ttl_s" in body:
            cfg.credit_ttl_s = float(body["credit_ttl_s"])
        if "enum_case_rate" in body:
            cfg.enum_case_rate = float(body["enum_case_rate"])
        if "refusals" in body:
            cfg.refusals = bool(body["refusals"])
        if "refusal_lexicon" in body:
            lexicon = body["refusal_lexicon"]
            cfg.refusal_lexicon = None if lexicon is None else parse_lexicon(lexicon)
        _set_batch_config(state, body)
    except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
        return _error_response(bad_request(str(exc)), state.request_id(), {})
    return await get_config(request)


@dataclass(frozen=True, slots=True)
class _BatchHost:
    """The emulator as the batch endpoints see it (``batch_routes.Host``)."""

    state: SimState

    @property
    def store(self) -> BatchStore:
        return self.state.batches

    @property
    def settings(self) -> BatchSettings:
        return self.state.config.batch

    def request_id(self) -> str:
        return self.state.request_id()

    def count(self, stat: str) -> None:
        self.state.stats[stat] += 1

    def authenticate(self, request: web.Request) -> tuple[str, str, frozenset[str]]:
        return _caller(self.state, request)

    def error_response(self, error: ApiError, request_id: str) -> web.Response:
        return _error_response(error, request_id, {})

    async def answer(
        self,
        params: Any,
        headers: Mapping[str, str],
        api_key: str,
        version: str,
        betas: frozenset[str],
    ) -> dict[str, Any]:
        return await answer_batch_item(self.state, params, headers, api_key, version, betas)


def _set_batch_config(state: SimState, body: dict[str, Any]) -> None:
    """The Batches API's settings, and its clock: ``batch_advance_s`` moves it forward."""
    batch = state.config.batch
    if "batch_latency_s" in body:
        batch.latency_s = _non_negative(body["batch_latency_s"], "batch_latency_s")
    if "batch_cancel_s" in body:
        batch.cancel_s = _non_negative(body["batch_cancel_s"], "batch_cancel_s")
    if "batch_faults" in body:
        batch.faults = dict(
            parse_batch_fault(f"{k}:{v}") for k, v in dict(body["batch_faults"]).items()
        )
    if "batch_limits" in body:
        batch.rpm, batch.queue = parse_batch_limits(str(body["batch_limits"]))
    if "batch_max_bytes" in body:
        batch.max_bytes = int(_non_negative(body["batch_max_bytes"], "batch_max_bytes"))
    if "batch_advance_s" in body:
        state.batches.clock.advance_s += _non_negative(body["batch_advance_s"], "batch_advance_s")


def _non_negative(value: Any, name: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def make_app(config: SimConfig) -> web.Application:
    # A batch may be 256 MB (Message Batches); larger bodies are a 413 (batch_routes).
    app = web.Application(client_max_size=257 * 1024 * 1024)
    state = SimState(config=config, rng=random.Random(config.seed))
    app[STATE] = state
    batch_routes.install(app, _BatchHost(state))
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
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
