"""The exception tree, in one place.

    EscalatorError
    ├── ConfigError              bad configuration; raised at start-up, names the variable
    ├── KafkaLaunchError         (kafka_local) the local broker could not be started
    ├── RetryableError           transient: retry with backoff, never dead-letter for it
    │   └── ModelUnavailable     the model API is failing (429, 529, 5xx, timeout, connection)
    └── PermanentError           this input can never succeed: dead-letter it with `reason`
        ├── InvalidRequest       malformed input (not JSON, bad UTF-8, schema violation, too long)
        └── ModelRejected        the API refused the request (400-class) or kept answering badly

Third-party errors (anthropic, aiokafka) are translated once, at their boundary, and re-raised
``from`` the original.
"""

from __future__ import annotations


class EscalatorError(Exception):
    """Base of every error Escalator raises on purpose."""


class ConfigError(EscalatorError):
    """A configuration value is missing or invalid. The message names the variable."""


class RetryableError(EscalatorError):
    """A transient failure: retry later."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, kind: str = "other"):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.kind = kind


class ModelUnavailable(RetryableError):
    """The model API failed transiently (rate limit, overload, 5xx, timeout, connection)."""


class PermanentError(EscalatorError):
    """This input cannot succeed however often it is tried. ``reason`` is a stable code."""

    reason = "permanent_error"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidRequest(PermanentError):
    """The request record is malformed."""

    reason = "invalid_request"


class ModelRejected(PermanentError):
    """The model API rejected the request, or its answers never validated."""

    reason = "model_rejected"
