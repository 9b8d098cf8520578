"""The exception tree, in one place.

    EscalatorError
    ├── ConfigError              bad configuration; raised at start-up, names the variable
    ├── KafkaUnreachable         (kafka/clients.py) no broker answered, with the likely cause
    ├── CalibrationError         (calibration/dataset.py) the decisions log cannot be used
    ├── RetryableError           transient: retry with backoff, never dead-letter for it
    │   └── ModelUnavailable     the model API is failing (429, 529, 5xx, timeout, connection)
    │       └── ApiBlocked       the *account* cannot call the model: spend limit, billing,
    │                            credentials, permission, unknown or retired model. Traffic is
    │                            held (never dead-lettered, never escalated) until it clears.
    └── PermanentError           this input can never succeed: dead-letter it with `reason`
        ├── InvalidRequest       malformed input (not JSON, bad UTF-8, schema violation, too long)
        └── ModelRejected        the API refused this request (a 400 while other requests
                                 succeed), or its answers kept failing validation

A refusal (``stop_reason: "refusal"``) is not an error: it is an answer, carried on the
:class:`~escalator.contract.messages.Attempt`, and each tier applies its refusal policy to it.

The development tools add ``KafkaLaunchError`` (``escalator_dev.kafka_local``: the local broker
could not be started). Third-party errors (anthropic, aiokafka) are translated once, at their
boundary, and re-raised ``from`` the original.
"""

from __future__ import annotations


class EscalatorError(Exception):
    """Base of every error Escalator raises on purpose."""


class ConfigError(EscalatorError):
    """A configuration value is missing or invalid. The message names the variable."""


class RetryableError(EscalatorError):
    """A transient failure: retry later."""

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        kind: str = "other",
        request_id: str | None = None,
    ):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.kind = kind
        self.request_id = request_id


class ModelUnavailable(RetryableError):
    """The model API failed transiently (rate limit, overload, 5xx, timeout, connection)."""


class ApiBlocked(ModelUnavailable):
    """The account cannot use the model until someone acts (or the month turns).

    ``kind`` is the blocked reason, a stable code exported as ``api_blocked{reason}``:
    ``spend_limit``, ``billing``, ``credentials``, ``permission``, ``model_not_found``,
    ``organization_on_hold``.
    """


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

    def __init__(
        self, message: str, *, reason: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.request_id = request_id
