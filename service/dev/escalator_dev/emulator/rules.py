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
from datetime import UTC, datetime
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
    }
)
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


def validate(body: dict[str, Any], spec: ModelSpec, version: str) -> Settings:
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
    return Settings(
        max_tokens=max_tokens,
        thinking=thinking,
        budget_tokens=budget,
        effort=effective_effort,
        display=display,
        schema=schema,
        geo=geo or "global",
    )


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
    """One organisation's requests, input-token and output-token buckets for one model.

    Input counts uncached input and cache writes, not cache reads; output is charged at
    ``max_tokens`` when a request starts and corrected to the real count when it ends, as the
    rate-limits page describes.
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

    def admit(self, input_tokens: int, max_tokens: int) -> str | None:
        """Take the estimate, or return which limit it would exceed."""
        now = self.clock()
        needs = {"requests": 1.0, "input-tokens": float(input_tokens), "output-tokens": max_tokens}
        for name, bucket in self.buckets.items():
            bucket.refill(now)
            if bucket.wait_s(needs[name]) > 0:
                return name
        for name, bucket in self.buckets.items():
            bucket.level -= needs[name]
        return None

    def retry_after_s(self, name: str, input_tokens: int, max_tokens: int) -> int:
        need = {"requests": 1.0, "input-tokens": input_tokens, "output-tokens": max_tokens}[name]
        wait = self.buckets[name].wait_s(float(need))
        return max(1, math.ceil(wait)) if math.isfinite(wait) else 60

    def settle(self, max_tokens: int, output_tokens: int) -> None:
        bucket = self.buckets["output-tokens"]
        bucket.refill(self.clock())
        bucket.level = min(bucket.limit, bucket.level + max(0, max_tokens - output_tokens))

    def headers(self) -> dict[str, str]:
        """``anthropic-ratelimit-*``: limit, remaining (tokens rounded to the thousand), and
        reset (RFC 3339, when the bucket is full again); ``tokens-*`` is the most
        restrictive of the two token limits."""
        now = self.clock()
        wall = time.time()
        out: dict[str, str] = {}
        tightest: tuple[float, str] | None = None
        for name, bucket in self.buckets.items():
            bucket.refill(now)
            remaining = max(0.0, bucket.level)
            if name != "requests":
                remaining = round(remaining / 1000) * 1000
                share = bucket.level / bucket.limit
                if tightest is None or share < tightest[0]:
                    tightest = (share, name)
            reset = datetime.fromtimestamp(wall + bucket.full_at(now) - now, UTC)
            out[f"anthropic-ratelimit-{name}-limit"] = str(int(bucket.limit))
            out[f"anthropic-ratelimit-{name}-remaining"] = str(int(remaining))
            out[f"anthropic-ratelimit-{name}-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
        if tightest is not None:
            for part in ("limit", "remaining", "reset"):
                out[f"anthropic-ratelimit-tokens-{part}"] = out[
                    f"anthropic-ratelimit-{tightest[1]}-{part}"
                ]
        return out


def check_prompt_length(spec: ModelSpec, total_input_tokens: int) -> None:
    """The context window: a longer prompt is a 400 ("prompt is too long")."""
    if total_input_tokens > spec.max_input_tokens:
        raise bad_request(
            f"prompt is too long: {total_input_tokens} tokens > {spec.max_input_tokens} maximum"
        )


def schema_key(schema: dict[str, Any] | None) -> str:
    return hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
