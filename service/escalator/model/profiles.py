"""Per-model request profiles: what Escalator sends to each model family, as data.

The documented rules differ by model (see docs/SIMULATOR.md, "Conformance", for the sources):

- Claude Haiku 5.5 and Sonnet 5.5 think by default (adaptive thinking), and thinking tokens
  count toward ``max_tokens``. Haiku 5.5 turns thinking off with ``{"type": "disabled"}``
  (effort high or below). Sonnet 5.5 answers ``disabled`` with a 400; its lowest setting is
  ``{"type": "between_tools"}``, accepted at effort low, medium or high.
- Opus 5.5 and Fable 5.1 and 5.2 always think; only effort can be lowered, so ``max_tokens``
  must leave room for the thinking before the answer.
- Haiku 4.5 and Sonnet 4.x do not think unless asked and take no ``output_config.effort`` here.
- The minimum cacheable prefix is 512 tokens on the 5.5 models, 1,024 on Sonnet 4.5, 2,048
  on Sonnet 4.6 (the docs disagree between 1,024 and 2,048; we take the stricter) and 4,096
  on Haiku 4.5; below it nothing is cached and no error is returned.
- The 5.x tokenizer counts about 30% more tokens than Haiku 4.5's for the same text.

A model id matches a profile by its exact id or as a dated snapshot of it
(``claude-haiku-4-5-20251001``): :func:`family`, which the price table uses too. An unknown
model is a start-up error unless ``ESCALATOR_MODEL_PROFILES_FILE`` supplies its profile (the
same file can override ours). A model the deprecations page lists as retired (:data:`RETIRED`)
is a start-up error naming the date, before any call: "Requests to retired models will fail".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from escalator.errors import ConfigError

EFFORTS = ("low", "medium", "high", "xhigh", "max")
THINKING_TYPES = ("adaptive", "disabled", "between_tools")
SNAPSHOT_RE = re.compile(r"^(?P<family>.+)-\d{8}$")


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """The request settings for one model family, and what we know of its limits."""

    #: ``thinking.type`` to send; None sends no ``thinking`` field (the model's default).
    thinking: str | None
    #: ``output_config.effort``; None sends none.
    effort: str | None
    #: Room for any thinking plus the answer (about 20 tokens of JSON).
    max_tokens: int
    #: Below this many prefix tokens the API caches nothing (and says nothing).
    cache_min_tokens: int
    #: Tokens per token of Haiku 4.5's tokenizer, for estimates (1.3 on the 5.x models).
    tokenizer_factor: float = 1.0
    #: True when the model thinks whatever we send (then max_tokens must cover thinking).
    always_thinks: bool = False

    def request_fields(self) -> dict[str, Any]:
        """The per-model keyword arguments of ``messages.create``, besides the format."""
        fields: dict[str, Any] = {"max_tokens": self.max_tokens}
        if self.thinking is not None:
            fields["thinking"] = {"type": self.thinking}
        return fields


# Keyed by model family. Answers are about 20 tokens; 128 leaves room for the 5.x tokenizer
# and any preamble. The models that always think get 4,096 at effort low.
BUILTIN: dict[str, ModelProfile] = {
    "claude-haiku-5-5": ModelProfile("disabled", "low", 128, 512, 1.3),
    "claude-sonnet-5-5": ModelProfile("between_tools", "medium", 128, 512, 1.3),
    "claude-opus-5-5": ModelProfile(None, "low", 4096, 512, 1.3, always_thinks=True),
    "claude-fable-5-1": ModelProfile(None, "low", 4096, 512, 1.3, always_thinks=True),
    "claude-fable-5-2": ModelProfile(None, "low", 4096, 512, 1.3, always_thinks=True),
    "claude-haiku-4-5": ModelProfile(None, None, 128, 4096, 1.0),
    "claude-sonnet-4-6": ModelProfile(None, None, 128, 2048, 1.0),
}
#: Retired models (Model deprecations; the pinned SDK's end-of-life list agrees), by family.
RETIRED: dict[str, date] = {"claude-sonnet-4-5": date(2026, 11, 30)}


def family(model: str, known: Mapping[str, object]) -> str | None:
    """The key of ``known`` that ``model`` names: itself, or the family of a dated snapshot
    (``claude-haiku-4-5-20251001`` -> ``claude-haiku-4-5``)."""
    if model in known:
        return model
    snapshot = SNAPSHOT_RE.match(model)
    if snapshot and snapshot.group("family") in known:
        return snapshot.group("family")
    return None


def rate_limit_group(model: str) -> str:
    """The rate-limit group of a model: its family and major version (``claude-haiku-5-5`` ->
    ``haiku-5``). Rate limits: "Limits are pooled by model family" (Claude Platform on AWS);
    the Admin API's ``model_group`` example is "Claude Sonnet 4.x". An id of another shape is
    its own group."""
    parts = model.split("-")
    if len(parts) >= 3 and parts[0] == "claude" and parts[2].isdigit():
        return f"{parts[1]}-{parts[2]}"
    return model


@dataclass(frozen=True, slots=True)
class ProfileTable:
    profiles: dict[str, ModelProfile]
    source: str = "built-in profiles"

    def lookup(self, model: str) -> ModelProfile | None:
        key = family(model, self.profiles)
        return None if key is None else self.profiles[key]

    def require(self, model: str, variable: str) -> ModelProfile:
        """The profile for ``model`` (named by ``variable``), or a start-up error."""
        retired = family(model, RETIRED)
        if retired is not None and family(model, self.profiles) is None:
            raise ConfigError(
                f"{variable}={model!r} is retired (since {RETIRED[retired]:%Y-%m-%d}, Model "
                "deprecations): requests naming it fail; choose a current model"
            )
        found = self.lookup(model)
        if found is None:
            known = ", ".join(sorted(self.profiles))
            raise ConfigError(
                f"{variable}={model!r} has no request profile (known: {known}); describe it in "
                "ESCALATOR_MODEL_PROFILES_FILE (see README, Configuration)"
            )
        return found


def _parse_profile(name: str, row: object, source: str) -> ModelProfile:
    if not isinstance(row, dict):
        raise ConfigError(f"{source}: {name}: must be an object")
    thinking = row.get("thinking")
    effort = row.get("effort")
    if thinking is not None and thinking not in THINKING_TYPES:
        raise ConfigError(
            f"{source}: {name}: thinking must be null or one of {', '.join(THINKING_TYPES)}"
        )
    if effort is not None and effort not in EFFORTS:
        raise ConfigError(f"{source}: {name}: effort must be null or one of {', '.join(EFFORTS)}")
    try:
        max_tokens = int(row["max_tokens"])
        cache_min = int(row.get("cache_min_tokens", 1024))
        factor = float(row.get("tokenizer_factor", 1.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{source}: {name}: needs an integer max_tokens (and optionally cache_min_tokens, "
            "tokenizer_factor)"
        ) from exc
    if max_tokens < 16 or cache_min < 0 or factor <= 0:
        raise ConfigError(f"{source}: {name}: max_tokens >= 16, cache_min_tokens >= 0")
    return ModelProfile(
        thinking=thinking,
        effort=effort,
        max_tokens=max_tokens,
        cache_min_tokens=cache_min,
        tokenizer_factor=factor,
        always_thinks=bool(row.get("always_thinks", False)),
    )


def load_profiles(path: Path | None) -> ProfileTable:
    """The built-in table, with the entries of ``ESCALATOR_MODEL_PROFILES_FILE`` on top."""
    if path is None:
        return ProfileTable(dict(BUILTIN))
    source = f"ESCALATOR_MODEL_PROFILES_FILE={path}"
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc})") from exc
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        raise ConfigError(f'{source}: must be {{"models": {{"<model id>": {{...}}}}}}')
    table = dict(BUILTIN)
    for name, row in models.items():
        table[str(name)] = _parse_profile(str(name), row, source)
    return ProfileTable(table, source=f"built-in profiles + {path}")
