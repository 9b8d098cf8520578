"""Ask the API about a configured model before any traffic: ``GET /v1/models/{id}``.

The model must exist, must not be retired, must support structured outputs, and must accept
the thinking setting and effort its request profile sends (``capabilities.thinking.types``,
``capabilities.effort``). A failure is a :class:`ConfigError` naming the variable, so
``escalator run`` exits 2 with one line. A deprecated model only warns. Transient failures
(the API is down) raise :class:`ModelUnavailable`: the caller decides whether to go on, since
the service holds traffic through outages anyway. ``escalator doctor`` runs the same check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import anthropic

from escalator.config import redacted_url
from escalator.errors import ApiBlocked, ConfigError, ModelUnavailable
from escalator.model.adapter import translate_error
from escalator.model.profiles import ModelProfile


def _api_error(body: object) -> bool:
    """True for the API's error shape: ``{"type": "error", "error": {"type": ...}}``."""
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the Models API said about one model, and what it means for us."""

    model: str
    display_name: str
    lifecycle: str
    retires_at: datetime | None
    max_tokens: int | None
    #: False when the API returned no capabilities (a proxy): nothing could be cross-checked.
    capabilities_known: bool
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [f"{self.display_name} ({self.lifecycle})"]
        if self.retires_at is not None:
            parts.append(f"retires {self.retires_at:%Y-%m-%d}")
        parts.append(
            "structured outputs, thinking and effort as profiled"
            if self.capabilities_known
            else "no capabilities reported: not cross-checked"
        )
        return ", ".join(parts)


async def check_model(
    client: anthropic.AsyncAnthropic, model: str, profile: ModelProfile, variable: str
) -> ModelFacts:
    """Raise ConfigError (naming ``variable``) unless ``model`` can serve this profile."""
    try:
        info = await client.models.retrieve(model)
    except anthropic.AnthropicError as exc:
        error = translate_error(exc)
        if isinstance(exc, anthropic.APIStatusError) and not _api_error(exc.body):
            # Not the API's own error shape: whatever answers there is not a Messages API.
            raise ConfigError(
                f"ANTHROPIC_BASE_URL: {redacted_url(str(client.base_url))} answered "
                f"{exc.status_code} to GET /v1/models/{model}, without an API error body: "
                "does it point at the Anthropic API (or a proxy of it)?"
            ) from exc
        if isinstance(error, ApiBlocked) and error.kind == "model_not_found":
            raise ConfigError(
                f"{variable}={model!r}: the API does not know this model (404)"
            ) from exc
        if isinstance(error, ApiBlocked) and error.kind in ("credentials", "permission"):
            raise ConfigError(
                f"ANTHROPIC_API_KEY: the API refused it while looking up {variable}={model!r}: "
                f"{error}"
            ) from exc
        if isinstance(error, ModelUnavailable):
            raise error from exc
        raise ConfigError(f"{variable}={model!r}: model lookup failed: {error}") from exc
    lifecycle = getattr(info, "lifecycle", None) or "active"
    retires_at = getattr(info, "retires_at", None)
    warnings: list[str] = []
    if lifecycle == "retired":
        raise ConfigError(
            f"{variable}={model!r} is retired: requests naming it fail; choose a current model"
        )
    if lifecycle == "deprecated":
        when = f" on {retires_at:%Y-%m-%d}" if retires_at else ""
        warnings.append(f"{model} is deprecated and retires{when}")
    caps = info.capabilities
    if caps is not None:
        if not caps.structured_outputs.supported:
            raise ConfigError(
                f"{variable}={model!r} does not support structured outputs, which Escalator "
                "needs for its {label, confidence} answer"
            )
        if profile.thinking is not None:
            accepted = getattr(caps.thinking.types, profile.thinking, None)
            if accepted is None or not accepted.supported:
                raise ConfigError(
                    f"{variable}={model!r} does not accept thinking.type {profile.thinking!r}, "
                    "which its request profile sends; fix it in ESCALATOR_MODEL_PROFILES_FILE"
                )
        if profile.effort is not None:
            level = getattr(caps.effort, profile.effort, None)
            if not caps.effort.supported or level is None or not level.supported:
                raise ConfigError(
                    f"{variable}={model!r} does not accept effort {profile.effort!r}, which its "
                    "request profile sends; fix it in ESCALATOR_MODEL_PROFILES_FILE"
                )
        if info.max_tokens is not None and profile.max_tokens > info.max_tokens:
            raise ConfigError(
                f"{variable}={model!r} allows max_tokens up to {info.max_tokens}; its profile "
                f"asks for {profile.max_tokens}"
            )
    return ModelFacts(
        model=model,
        display_name=info.display_name,
        lifecycle=lifecycle,
        retires_at=retires_at,
        max_tokens=info.max_tokens,
        capabilities_known=caps is not None,
        warnings=tuple(warnings),
    )
