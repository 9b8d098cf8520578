"""The documented rules the emulator enforces: request validation, the structured-outputs
schema subset, thinking and effort, token counts, and per-model rate-limit buckets.

Each rule raises :class:`ApiError` with the status, error type and message the API documents
(or, where the docs quote none, a message in the API's style). docs/SIMULATOR.md lists every
rule with its source page and the test that covers Escalator's handling of it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from escalator_dev.emulator.models import ModelSpec

API_VERSIONS = ("2023-06-01", "2026-10-21")
SAMPLING = ("temperature", "top_p", "top_k")
#: Top-level fields of a Messages request. Anything else is a 400, as the API answers
#: ("Extra inputs are not permitted").
KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "output_format",
        "service_tier",
        "inference_geo",
        "container",
        "mcp_servers",
        "context_management",
        "cache_control",
        # In the pinned SDK's request types (2.14.0), with documented behaviour:
        "diagnostics",
        "speed",
        "fallback_credit_token",
        "fallbacks",
    }
)
#: ``anthropic-beta`` values that make a refusal carry a fallback credit token (Fallback credit:
#: "The server-side-fallback header also grants the same fields, and the earlier
#: fallback-credit-2026-06-01 header remains accepted").
CREDIT_BETAS = frozenset(
    {
        "fallback-credit-2026-07-01",
        "fallback-credit-2026-06-01",
        "server-side-fallback-2026-07-01",
        "server-side-fallback-2026-06-01",
    }
)
FAST_MODE_BETA = "fast-mode-2026-02-01"
NUMBER_CONSTRAINTS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
STRING_CONSTRAINTS = ("minLength", "maxLength")
ARRAY_CONSTRAINTS = ("maxItems", "uniqueItems", "contains")
OBJECT_CONSTRAINTS = ("minProperties", "maxProperties", "patternProperties", "propertyNames")
STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)
COMPLEX_PATTERN = ("(?=", "(?!", "(?<=", "(?<!", "\\b", "\\B", "\\1", "\\2")


class ApiError(Exception):
    """An HTTP error in the API's shape: ``{"type": "error", "error": {type, message}}``."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}
        self.error_code = error_code


def bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


def tokens(text: str, factor: float = 1.0) -> int:
    """Deterministic token count: a token per four UTF-8 bytes (Haiku 4.5's tokenizer, as
    emulated), times the model's tokenizer factor (1.3 on the 5.x models), rounded up."""
    return math.ceil(len(text.encode()) / 4 * factor)


def unit(text: str, salt: str) -> float:
    """A deterministic number in [0, 1) from the text."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# -- structured outputs ----------------------------------------------------------------------
def check_schema(schema: Any, path: str = "output_config.format.schema") -> None:
    """Reject what the structured-outputs page lists as unsupported (400 with details)."""
    if not isinstance(schema, dict):
        raise bad_request(f"{path}: must be an object")
    _check_node(schema, path, schema, set())


def _check_node(node: Any, path: str, root: dict[str, Any], seen_refs: set[str]) -> None:
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith("#/"):
            raise bad_request(f"{path}: external $ref is not supported")
        if ref in seen_refs:
            raise bad_request(f"{path}: recursive schemas are not supported")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        if target is None:
            raise bad_request(f"{path}: $ref {ref!r} does not resolve")
        _check_node(target, path, root, seen_refs | {ref})
    for name, banned in (
        ("number", NUMBER_CONSTRAINTS),
        ("integer", NUMBER_CONSTRAINTS),
        ("string", STRING_CONSTRAINTS),
        ("array", ARRAY_CONSTRAINTS),
        ("object", OBJECT_CONSTRAINTS),
    ):
        present = sorted(k for k in banned if k in node)
        if present and (name in kinds or kind is None):
            word = "property" if len(present) == 1 else "properties"
            raise bad_request(
                f"{path}: For '{name}' type, {word} {', '.join(present)} "
                f"{'is' if len(present) == 1 else 'are'} not supported"
            )
    if "array" in kinds and node.get("minItems", 0) not in (0, 1):
        raise bad_request(
            f"{path}: For 'array' type, 'minItems' values other than 0 or 1 are not supported"
        )
    if "string" in kinds:
        fmt = node.get("format")
        if fmt is not None and fmt not in STRING_FORMATS:
            raise bad_request(f"{path}: For 'string' type, format {fmt!r} is not supported")
        pattern = node.get("pattern")
        if isinstance(pattern, str) and any(p in pattern for p in COMPLEX_PATTERN):
            raise bad_request(f"{path}: For 'string' type, this pattern is not supported")
    if "enum" in node:
        values = node["enum"]
        if not isinstance(values, list) or any(isinstance(v, dict | list) for v in values):
            raise bad_request(f"{path}: enum values must be strings, numbers, booleans or null")
    if "object" in kinds:
        if node.get("additionalProperties") is not False:
            raise bad_request(
                f"{path}: For 'object' type, 'additionalProperties' must be explicitly set to false"
            )
        for key, child in (node.get("properties") or {}).items():
            _check_node(child, f"{path}.properties.{key}", root, seen_refs)
    if "array" in kinds:
        _check_node(node.get("items"), f"{path}.items", root, seen_refs)
    for combinator in ("anyOf", "allOf"):
        for i, child in enumerate(node.get(combinator) or []):
            if combinator == "allOf" and isinstance(child, dict) and "$ref" in child:
                raise bad_request(f"{path}: allOf with $ref is not supported")
            _check_node(child, f"{path}.{combinator}[{i}]", root, seen_refs)


# -- the request -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Settings:
    """What a valid request asks for, after the model's defaults are applied."""

    max_tokens: int
    #: "adaptive", "enabled" or "off" (disabled, between_tools, or a model that does not think)
    thinking: str
    budget_tokens: int | None
    effort: str | None
    display: str
    schema: dict[str, Any] | None
    geo: str
    #: ``speed``: "standard" or "fast" (Fast mode, Opus 5.5 with its beta header).
    speed: str = "standard"
    #: ``diagnostics``: the request opted in (``previous_message_id`` may be None).
    diagnostics: bool = False
    previous_message_id: str | None = None
    #: Top-level ``cache_control``: its TTL ("5m" or "1h"), None when absent.
    auto_cache_ttl: str | None = None
    #: ``fallback_credit_token`` (its token, and the mode: "strict" or "best_effort").
    credit_token: str | None = None
    credit_mode: str = "strict"
    #: ``fallbacks``: a list of model ids, "default", or None.
    fallbacks: tuple[str, ...] | str | None = None


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def validate(
    body: dict[str, Any], spec: ModelSpec, version: str, betas: frozenset[str] = frozenset()
) -> Settings:
    """Every documented 400 for this model, in the order a reader of the docs would check."""
    extra = sorted(set(body) - KNOWN_FIELDS)
    if extra:
        raise bad_request(f"{extra[0]}: Extra inputs are not permitted")
    if body.get("stream"):
        raise bad_request("stream: the Escalator emulator answers non-streaming requests only")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad_request("max_tokens: Field required (a positive integer)")
    if max_tokens > spec.max_tokens:
        raise bad_request(
            f"max_tokens: {max_tokens} > {spec.max_tokens}, which is the maximum allowed "
            f"number of output tokens for {spec.id}"
        )
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        raise bad_request("messages: at least one message is required")
    if msgs[0].get("role") != "user":
        raise bad_request('messages: first message must use the "user" role')
    if msgs[-1].get("role") == "assistant" and spec.rejects_prefill:
        raise bad_request(
            "This model does not support assistant message prefill. The conversation must "
            "end with a user message."
        )
    sampling = [k for k in SAMPLING if k in body]
    if sampling and version >= "2026-10-21":
        raise bad_request(f"{sampling[0]}: this parameter was removed in API version 2026-10-21")
    if sampling and spec.rejects_sampling:
        raise bad_request(f"{sampling[0]}: is not supported for {spec.id}")
    if "temperature" in body and "top_p" in body and spec.id == "claude-haiku-4-5":
        raise bad_request("temperature and top_p cannot both be specified for this model")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        if spec.rejects_forced_tools:
            raise bad_request(
                'tool_choice: type "tool" and "any" are not supported for this model.'
            )
    output_config = body.get("output_config") or {}
    if not isinstance(output_config, dict):
        raise bad_request("output_config: must be an object")
    effort = output_config.get("effort")
    if effort is not None:
        if not spec.efforts:
            raise bad_request("output_config.effort: effort is not supported on this model")
        if effort not in spec.efforts:
            raise bad_request(
                f"output_config.effort: {effort!r} is not supported on this model "
                f"(supported: {', '.join(spec.efforts)})"
            )
    effective_effort = effort or spec.default_effort
    thinking, budget, display = _thinking(body.get("thinking"), spec, effective_effort, max_tokens)
    schema: dict[str, Any] | None = None
    fmt = output_config.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            raise bad_request('output_config.format.type: Input should be "json_schema"')
        check_schema(fmt.get("schema"))
        schema = fmt["schema"]
    geo = body.get("inference_geo")
    if geo is not None:
        if not spec.inference_geo:
            raise bad_request("inference_geo: not supported on this model")
        if geo not in ("global", "us"):
            raise bad_request('inference_geo: must be "global" or "us"')
    token, mode = _credit_token(body.get("fallback_credit_token"), betas)
    fallbacks = _fallbacks(body.get("fallbacks"), spec)
    if token is not None and fallbacks is not None:
        # "Two failures stay hard in both modes: a malformed token, and combining
        # fallback_credit_token with fallbacks."
        raise bad_request("fallback_credit_token cannot be combined with fallbacks")
    previous, diagnostics = _diagnostics(body.get("diagnostics"))
    return Settings(
        max_tokens=max_tokens,
        thinking=thinking,
        budget_tokens=budget,
        effort=effective_effort,
        display=display,
        schema=schema,
        geo=geo or "global",
        speed=_speed(body.get("speed"), spec, betas),
        diagnostics=diagnostics,
        previous_message_id=previous,
        auto_cache_ttl=_cache_control(body.get("cache_control"), "cache_control"),
        credit_token=token,
        credit_mode=mode,
        fallbacks=fallbacks,
    )


def _speed(raw: Any, spec: ModelSpec, betas: frozenset[str]) -> str:
    """Fast mode: "supported on Claude Opus 5.5, Claude Opus 5, and Claude Opus 4.8 ... Set
    speed: "fast" with the fast-mode-2026-02-01 beta header". The page does not say what other
    models answer: a 400 (stricter). "Some models require the fast-mode beta header for any
    speed value": those that have fast mode, here."""
    if raw is None:
        return "standard"
    if raw not in ("standard", "fast"):
        raise bad_request('speed: Input should be "standard" or "fast"')
    if spec.fast_mode and FAST_MODE_BETA not in betas:
        raise bad_request(f"speed: requires the anthropic-beta header {FAST_MODE_BETA}")
    if raw == "fast" and not spec.fast_mode:
        raise bad_request(f"speed: fast mode is not supported for {spec.id}")
    return str(raw)


def _diagnostics(raw: Any) -> tuple[str | None, bool]:
    """``diagnostics: {previous_message_id: "msg_..." | null}`` (null opts in on a first turn)."""
    if raw is None:
        return None, False
    if not isinstance(raw, dict) or set(raw) - {"previous_message_id"}:
        raise bad_request("diagnostics: must be an object with previous_message_id")
    previous = raw.get("previous_message_id")
    if previous is not None and not isinstance(previous, str):
        raise bad_request("diagnostics.previous_message_id: must be a string or null")
    return previous, True


def _cache_control(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") != "ephemeral":
        raise bad_request(f'{where}: Input should be {{"type": "ephemeral"}}')
    ttl = raw.get("ttl", "5m")
    if ttl not in ("5m", "1h"):
        raise bad_request(f'{where}.ttl: Input should be "5m" or "1h"')
    return str(ttl)


def _credit_token(raw: Any, betas: frozenset[str]) -> tuple[str | None, str]:
    """The bare string, or ``{token, mode}``; the object form "Requires anthropic-beta:
    fallback-credit-2026-07-01; without that header the field accepts the bare string only"."""
    if raw is None:
        return None, "strict"
    if isinstance(raw, str):
        return raw, "strict"
    if not isinstance(raw, dict) or not isinstance(raw.get("token"), str):
        raise bad_request("fallback_credit_token: must be a string or {token, mode}")
    if "fallback-credit-2026-07-01" not in betas:
        raise bad_request(
            "fallback_credit_token: the object form requires the anthropic-beta header "
            "fallback-credit-2026-07-01"
        )
    mode = raw.get("mode", "strict")
    if mode not in ("strict", "best_effort"):
        raise bad_request('fallback_credit_token.mode: Input should be "strict" or "best_effort"')
    return str(raw["token"]), str(mode)


def _fallbacks(raw: Any, spec: ModelSpec) -> tuple[str, ...] | str | None:
    """``fallbacks``: "Some models don't support fallbacks; on those models, a list of
    fallback models returns a 400 error ... On a model that doesn't support fallbacks, the
    request runs on the requested model alone" (with "default")."""
    if raw is None:
        return None
    if raw == "default":
        return "default"
    if not isinstance(raw, list) or not raw or len(raw) > 3:
        raise bad_request('fallbacks: must be "default" or a list of 1 to 3 {model} objects')
    models: list[str] = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise bad_request("fallbacks: each entry must be an object with a model")
        models.append(entry["model"])
    if not spec.server_fallbacks:
        raise bad_request(f"fallbacks: {spec.id} does not support server-side fallbacks")
    return tuple(models)


def _thinking(
    raw: Any, spec: ModelSpec, effort: str | None, max_tokens: int
) -> tuple[str, int | None, str]:
    display = spec.thinking_display
    if raw is None:
        return ("adaptive" if spec.thinking_default == "adaptive" else "off"), None, display
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise bad_request("thinking: must be an object with a type")
    kind = raw["type"]
    if kind not in spec.thinking_types:
        if kind == "disabled" and "between_tools" in spec.thinking_types:
            raise bad_request(
                '"thinking.type.disabled" is not supported for this model. Use '
                '"thinking.type.between_tools" to turn off up-front thinking.'
            )
        if kind in ("disabled", "enabled") and spec.thinking_types == {"adaptive"}:
            raise bad_request(
                f'"thinking.type.{kind}" is not supported for this model. Use '
                '"thinking.type.adaptive" and "output_config.effort" to control thinking '
                "behavior."
            )
        if kind == "adaptive":
            raise bad_request("adaptive thinking is not supported on this model")
        raise bad_request(f'"thinking.type.{kind}" is not supported for this model.')
    if isinstance(raw.get("display"), str):
        display = raw["display"]
    if kind in ("disabled", "between_tools"):
        if spec.efforts and effort not in spec.off_efforts:
            raise bad_request(
                f'"thinking.type.{kind}" is not supported with effort {effort!r}; use effort '
                "low, medium or high, or adaptive thinking"
            )
        return "off", None, display
    if kind == "enabled":
        budget = raw.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise bad_request("thinking.budget_tokens: must be at least 1024")
        if budget >= max_tokens:
            raise bad_request("max_tokens must be greater than thinking.budget_tokens.")
        return "enabled", budget, display
    return "adaptive", None, display


#: Emulated thinking length per effort level, in tokens, before the text's own factor. The
#: docs give no amounts; these make thinking large against small max_tokens values, as the
#: migration guides warn ("leave room for thinking").
THINKING_BASE = {"low": 90, "medium": 220, "high": 480, "xhigh": 900, "max": 1600}


def thinking_tokens(text: str, settings: Settings) -> int:
    """How many tokens the emulated model thinks before answering ``text``."""
    if settings.thinking == "off":
        return 0
    h = unit(text, "thinking")
    base = THINKING_BASE.get(settings.effort or "high", 480)
    if settings.thinking == "adaptive" and settings.effort == "low" and h < 0.25:
        return 0  # adaptive: "a simple ... question may get a direct response with no thinking"
    n = int(base * (0.6 + 0.8 * h)) + len(text) // 40
    if settings.budget_tokens is not None:
        n = min(n, settings.budget_tokens)
    return n


# -- rate limits -----------------------------------------------------------------------------
@dataclass(slots=True)
class Bucket:
    """A token bucket refilled continuously at ``limit`` per minute, capacity ``limit``."""

    limit: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.updated) * self.limit / 60.0)
        self.updated = now

    def level_at(self, now: float) -> float:
        self.refill(now)
        return self.level

    def wait_s(self, need: float) -> float:
        """Seconds until ``need`` is available (0 if it is now)."""
        if need <= self.level:
            return 0.0
        if need > self.limit:
            return math.inf
        return (need - self.level) * 60.0 / self.limit

    def full_at(self, now: float) -> float:
        return now + (self.limit - self.level) * 60.0 / self.limit


@dataclass(slots=True)
class RateLimiter:
    """One set of requests, input-token and output-token buckets (an organisation's rate-limit
    group, or a workspace's limits for it: ``emulator.limits``).

    What counts as input is the caller's to say (cache reads or not); output is charged at
    ``max_tokens`` when a request is admitted and corrected to the real count when it ends, as
    the rate-limits page describes.
    """

    rpm: int
    itpm: int
    otpm: int
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = self.clock()
        self.buckets = {
            "requests": Bucket(self.rpm, self.rpm, now),
            "input-tokens": Bucket(self.itpm, self.itpm, now),
            "output-tokens": Bucket(self.otpm, self.otpm, now),
        }

    def _needs(self, input_tokens: int, max_tokens: int) -> dict[str, float]:
        return {
            "requests": 1.0,
            "input-tokens": float(input_tokens),
            "output-tokens": float(max_tokens),
        }

    def exceeded(self, input_tokens: int, max_tokens: int) -> str | None:
        """Which limit the call would exceed now (None: it fits)."""
        now = self.clock()
        for name, need in self._needs(input_tokens, max_tokens).items():
            bucket = self.buckets[name]
            bucket.refill(now)
            if bucket.wait_s(need) > 0:
                return name
        return None

    def charge(self, input_tokens: int, max_tokens: int) -> None:
        now = self.clock()
        for name, need in self._needs(input_tokens, max_tokens).items():
            self.buckets[name].refill(now)
            self.buckets[name].level -= need

    def retry_after_s(self, name: str, input_tokens: int, max_tokens: int) -> int:
        need = self._needs(input_tokens, max_tokens)[name]
        wait = self.buckets[name].wait_s(need)
        return max(1, math.ceil(wait)) if math.isfinite(wait) else 60

    def settle(self, max_tokens: int, output_tokens: int) -> None:
        bucket = self.buckets["output-tokens"]
        bucket.refill(self.clock())
        bucket.level = min(bucket.limit, bucket.level + max(0, max_tokens - output_tokens))


def check_prompt_length(spec: ModelSpec, total_input_tokens: int) -> None:
    """The context window: a longer prompt is a 400 ("prompt is too long")."""
    if total_input_tokens > spec.max_input_tokens:
        raise bad_request(
            f"prompt is too long: {total_input_tokens} tokens > {spec.max_input_tokens} maximum"
        )


def schema_key(schema: dict[str, Any] | None) -> str:
    return hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
