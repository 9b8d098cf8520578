"""The emulator's table of models, as Anthropic's documentation describes them.

One row per model drives everything the emulator does per model: which ``thinking`` settings
and effort levels it accepts, whether it thinks when the request says nothing, its minimum
cacheable prefix, its tokenizer, its output cap, whether it rejects sampling parameters,
prefill and forced tool use, whether safety classifiers can refuse, its lifecycle, and the
answering profile (cheap or strong) of :func:`server.classify`. The sources, and the
stricter reading taken where they disagree, are in docs/SIMULATOR.md ("Conformance").

This table is written from the docs, not from Escalator's request profiles
(``escalator.model.profiles``): the emulator must not share the service's assumptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

EFFORT_LEVELS = ("low", "medium", "high", "xhigh", "max")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    display_name: str
    line: str
    released: date
    #: "cheap" or "strong": which answering rule of ``server.classify`` applies.
    answers: str
    #: ``thinking`` when the request has none: "adaptive" (on) or "off".
    thinking_default: str
    #: Accepted ``thinking.type`` values.
    thinking_types: frozenset[str]
    #: Effort levels accepted (empty: ``output_config.effort`` is a 400).
    efforts: tuple[str, ...]
    default_effort: str | None
    #: Effort levels at which thinking may be turned off (``disabled``/``between_tools``).
    off_efforts: tuple[str, ...] = ("low", "medium", "high")
    cache_min_tokens: int = 1024
    #: Tokens per token of the older (Haiku 4.5) tokenizer.
    tokenizer_factor: float = 1.0
    max_tokens: int = 64_000
    max_input_tokens: int = 200_000
    #: Rejects temperature/top_p/top_k even under API version 2023-06-01.
    rejects_sampling: bool = False
    #: Rejects a final assistant turn (prefill).
    rejects_prefill: bool = False
    #: Rejects tool_choice "any" and "tool".
    rejects_forced_tools: bool = False
    #: Safety classifiers that can answer stop_reason "refusal".
    refuses: bool = False
    #: Accepts the ``inference_geo`` request parameter (4.6 and later).
    inference_geo: bool = False
    #: Default of ``thinking.display`` ("omitted" on the 5.x models).
    thinking_display: str = "summarized"
    deprecated_on: date | None = None
    retires_on: date | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    #: Fast mode (``speed: "fast"`` with its beta header): Opus 5.5 here.
    fast_mode: bool = False
    #: Accepts a ``fallbacks`` list (server-side fallback): the Fable and Opus models here.
    server_fallbacks: bool = False

    @property
    def group(self) -> str:
        """The rate-limit group: a model family by major version ("Claude Sonnet 4.x" is the
        Admin API's example of a ``model_group``; "Limits are pooled by model family")."""
        return f"{self.line}-{self.id.removeprefix(f'claude-{self.line}-').split('-')[0]}"

    def lifecycle(self, today: date) -> str:
        if self.retires_on is not None and today >= self.retires_on:
            return "retired"
        if self.deprecated_on is not None and today >= self.deprecated_on:
            return "deprecated"
        return "active"

    def info(self, today: date, *, retired: bool = False) -> dict[str, Any]:
        """``GET /v1/models/{id}``: the ModelInfo object."""

        def yes(flag: bool) -> dict[str, bool]:
            return {"supported": flag}

        lifecycle = "retired" if retired else self.lifecycle(today)
        efforts = set(self.efforts)
        thinking_supported = self.thinking_default != "off" or "enabled" in self.thinking_types
        return {
            "type": "model",
            "id": self.id,
            "display_name": self.display_name,
            "created_at": _rfc3339(self.released),
            "lifecycle": lifecycle,
            "deprecated_at": _rfc3339(self.deprecated_on)
            if self.deprecated_on and lifecycle != "active"
            else None,
            "retires_at": _rfc3339(self.retires_on) if self.retires_on else None,
            "line": self.line,
            "max_input_tokens": self.max_input_tokens,
            "max_tokens": self.max_tokens,
            "capabilities": {
                "batch": yes(True),
                "citations": yes(True),
                "code_execution": yes(True),
                "context_management": {"supported": True},
                "effort": {
                    "supported": bool(efforts),
                    **{level: yes(level in efforts) for level in EFFORT_LEVELS},
                },
                "image_input": yes(True),
                "pdf_input": yes(True),
                "server_tools": {
                    "supported": True,
                    "code_execution": yes(True),
                    "web_search": yes(True),
                },
                "structured_outputs": yes(True),
                "thinking": {
                    "supported": thinking_supported,
                    "types": {
                        kind: yes(kind in self.thinking_types)
                        for kind in ("adaptive", "between_tools", "disabled", "enabled")
                    },
                },
            },
        }


def _rfc3339(day: date) -> str:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


ALL_EFFORTS = EFFORT_LEVELS
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "claude-haiku-5-5",
        "Claude Haiku 5.5",
        "haiku",
        date(2026, 10, 7),
        answers="cheap",
        thinking_default="adaptive",
        thinking_types=frozenset({"adaptive", "disabled"}),
        efforts=ALL_EFFORTS,
        default_effort="medium",
        cache_min_tokens=512,
        tokenizer_factor=1.3,
        max_tokens=128_000,
        max_input_tokens=1_000_000,
        rejects_sampling=True,
        rejects_prefill=True,
        refuses=True,
        inference_geo=True,
        thinking_display="omitted",
    ),
    ModelSpec(
        "claude-sonnet-5-5",
        "Claude Sonnet 5.5",
        "sonnet",
        date(2026, 9, 28),
        answers="strong",
        thinking_default="adaptive",
        thinking_types=frozenset({"adaptive", "between_tools"}),
        efforts=ALL_EFFORTS,
        default_effort="high",
        cache_min_tokens=512,
        tokenizer_factor=1.3,
        max_tokens=128_000,
        max_input_tokens=1_000_000,
        rejects_sampling=True,
        rejects_prefill=True,
        rejects_forced_tools=True,
        refuses=True,
        inference_geo=True,
        thinking_display="omitted",
    ),
    ModelSpec(
        "claude-opus-5-5",
        "Claude Opus 5.5",
        "opus",
        date(2026, 9, 22),
        answers="strong",
        thinking_default="adaptive",
        thinking_types=frozenset({"adaptive"}),
        efforts=ALL_EFFORTS,
        default_effort="medium",
        off_efforts=(),
        cache_min_tokens=512,
        tokenizer_factor=1.3,
        max_tokens=128_000,
        max_input_tokens=1_000_000,
        rejects_sampling=True,
        rejects_prefill=True,
        rejects_forced_tools=True,
        refuses=True,
        inference_geo=True,
        thinking_display="omitted",
        fast_mode=True,
        server_fallbacks=True,
    ),
    ModelSpec(
        "claude-fable-5-2",
        "Claude Fable 5.2",
        "fable",
        date(2026, 11, 9),
        answers="strong",
        thinking_default="adaptive",
        thinking_types=frozenset({"adaptive"}),
        efforts=ALL_EFFORTS,
        default_effort="high",
        off_efforts=(),
        cache_min_tokens=512,
        tokenizer_factor=1.3,
        max_tokens=128_000,
        max_input_tokens=1_000_000,
        rejects_sampling=True,
        rejects_prefill=True,
        rejects_forced_tools=True,
        refuses=True,
        inference_geo=True,
        thinking_display="omitted",
        server_fallbacks=True,
    ),
    ModelSpec(
        "claude-fable-5-1",
        "Claude Fable 5.1",
        "fable",
        date(2026, 9, 1),
        answers="strong",
        thinking_default="adaptive",
        thinking_types=frozenset({"adaptive"}),
        efforts=ALL_EFFORTS,
        default_effort="high",
        off_efforts=(),
        cache_min_tokens=512,
        tokenizer_factor=1.3,
        max_tokens=128_000,
        max_input_tokens=1_000_000,
        rejects_sampling=True,
        rejects_prefill=True,
        rejects_forced_tools=True,
        refuses=True,
        inference_geo=True,
        thinking_display="omitted",
        server_fallbacks=True,
    ),
    ModelSpec(
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        "haiku",
        date(2025, 10, 15),
        answers="cheap",
        thinking_default="off",
        thinking_types=frozenset({"enabled", "disabled"}),
        efforts=(),
        default_effort=None,
        cache_min_tokens=4096,
        tokenizer_factor=1.0,
        max_tokens=64_000,
        aliases=("claude-haiku-4-5-20251001",),
    ),
    ModelSpec(
        "claude-sonnet-4-6",
        "Claude Sonnet 4.6",
        "sonnet",
        date(2026, 2, 17),
        answers="strong",
        thinking_default="off",
        thinking_types=frozenset({"adaptive", "enabled", "disabled"}),
        efforts=("low", "medium", "high", "max"),
        default_effort="high",
        # The docs give both 1,024 and 2,048; the stricter (larger) minimum is emulated.
        cache_min_tokens=2048,
        tokenizer_factor=1.0,
        max_tokens=128_000,
        max_input_tokens=1_000_000,
        rejects_prefill=True,
        inference_geo=True,
    ),
    ModelSpec(
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        "sonnet",
        date(2025, 9, 29),
        answers="strong",
        thinking_default="off",
        thinking_types=frozenset({"enabled", "disabled"}),
        efforts=(),
        default_effort=None,
        cache_min_tokens=1024,
        tokenizer_factor=1.0,
        max_tokens=64_000,
        deprecated_on=date(2026, 9, 29),
        retires_on=date(2026, 11, 30),
        aliases=("claude-sonnet-4-5-20250929",),
    ),
)


def model_index() -> dict[str, ModelSpec]:
    """Every id and alias -> its spec."""
    out: dict[str, ModelSpec] = {}
    for spec in MODELS:
        out[spec.id] = spec
        for alias in spec.aliases:
            out[alias] = spec
    return out


#: Rate limits of the emulated organisation per rate-limit group (a model family by major
#: version, ``ModelSpec.group``): (RPM, input TPM, output TPM). The default is a custom tier
#: well above Scale, so that benchmarks measure Escalator rather than the limit;
#: ``--rate-limit`` and ``POST /_sim/config`` set binding ones (naming a model sets its
#: group's).
DEFAULT_LIMITS = (100_000, 100_000_000, 20_000_000)
#: The documented tiers for Haiku 5.5 (Start, Build, Scale); ``--tier`` applies them to
#: every model.
TIERS: dict[str, tuple[int, int, int]] = {
    "start": (1_000, 2_000_000, 400_000),
    "build": (5_000, 5_000_000, 1_000_000),
    "scale": (10_000, 10_000_000, 2_000_000),
    "custom": DEFAULT_LIMITS,
}
