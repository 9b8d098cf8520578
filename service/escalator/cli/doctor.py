"""``escalator doctor``: check a deployment against the real API (or the emulator) before
traffic flows, one line per check.

For each configured model (the cheap one and the strong one):

- ``model``: ``GET /v1/models/{id}``: it exists, is not retired, supports structured outputs,
  and accepts the thinking setting and effort its request profile sends;
- ``price``: the price table has it;
- ``classify``: one classification of a fixed harmless text round-trips (valid label,
  ``stop_reason``, tokens, latency, cost);
- ``cache``: a second call reads the prompt cache, or a ``note`` line says why not (the
  prefix is below that model's minimum cacheable length, which the API does not report as an
  error): a cost to know, not a failure;
- ``limits``: the organisation's rate limits from the ``anthropic-ratelimit-*`` headers.

Then ``kafka``: the bootstrap servers answer with the configured security, and every topic
exists (with its partition count and, for an input topic, its retention); the parked topic has
no record waiting for ``escalator parked replay`` (else it says how many, and since when the
hold they come from began). Last, ``service``: when a service listens on this host's metrics
port (doctor run in a tier's pod), each tier's hold as ``/readyz`` reports it, with when it
began and when the API says it ends. A model the account may not call says when the API says
that ends (a spend cap). Exit 0 only when every check passed; otherwise exit 2 with one line
naming the failed checks. The API key is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import anthropic

from escalator.config import Settings, redacted_url
from escalator.contract.messages import Attempt
from escalator.errors import (
    ApiBlocked,
    ConfigError,
    EscalatorError,
    ModelRejected,
    ModelUnavailable,
)

#: A text no safety classifier should decline and every model should call safe.
HARMLESS = "What a lovely afternoon for a picnic in the park with the children."


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: Passed, with something to know (a cost, not a fault): printed as ``note``.
    note: bool = False

    def line(self) -> str:
        status = "FAIL" if not self.ok else "note" if self.note else "ok  "
        return f"{status} {self.name}: {self.detail}"


def _usd(x: float) -> str:
    return f"${x:.6f}"


async def check_model_end_to_end(
    settings: Settings, tier: str, client: anthropic.AsyncAnthropic
) -> list[Check]:
    from escalator.model.adapter import AnthropicClassifier, RateLimits
    from escalator.model.check import check_model
    from escalator.model.prices import load_prices
    from escalator.model.stack import model_profiles
    from escalator.model.task import load_task
    from escalator.tiers.table import tier_table

    choice = tier_table(settings)[tier].model
    model, variable = choice.model, choice.variable
    checks: list[Check] = []
    try:
        profile = model_profiles(settings, [choice])[tier]
        facts = await check_model(client, model, profile, variable)
    except (ConfigError, ModelUnavailable) as exc:
        return [Check(f"model {model}", False, str(exc))]
    note = "; ".join(facts.warnings)
    checks.append(Check(f"model {model}", True, facts.summary() + (f"; {note}" if note else "")))
    prices = load_prices(settings.routing.prices_file)
    price = prices.prices.get(model)
    if price is None:
        checks.append(
            Check(f"price {model}", False, f"not in price table {prices.version}; add it with "
                  "ESCALATOR_PRICES_FILE")
        )  # fmt: skip
        return checks
    checks.append(
        Check(
            f"price {model}",
            True,
            f"${price.input:g} in, ${price.output:g} out, ${price.cache_write:g} cache write, "
            f"${price.cache_read:g} cache read per MTok (table {prices.version})",
        )
    )
    seen: list[RateLimits] = []
    classifier = AnthropicClassifier(
        client,
        tier=tier,
        model=model,
        task=load_task(settings.routing.task_file),
        prices=prices,
        profile=profile,
        cache_ttl=settings.model.cache_ttl,
        on_rate_limits=lambda _, limits: seen.append(limits),
    )
    try:
        first = await classifier.classify(HARMLESS)
        second = await classifier.classify(HARMLESS + " ")
    except (ModelUnavailable, ModelRejected) as exc:
        checks.append(Check(f"classify {model}", False, str(exc) + _ends(exc)))
        return checks
    checks.append(_classified(model, first))
    checks.append(_cached(model, first, second, profile.cache_min_tokens))
    if seen:
        parts = [
            f"{kind} {remaining:,.0f}/{limit:,.0f}" for kind, (limit, remaining) in seen[-1].items()
        ]
        checks.append(
            Check(f"limits {model}", True, "remaining/limit per minute: " + ", ".join(parts))
        )
    else:
        checks.append(
            Check(
                f"limits {model}",
                True,
                "no anthropic-ratelimit-* headers (a proxy or another platform?)",
            )
        )
    return checks


def _ends(exc: Exception) -> str:
    """For a blocked account, when the API says the block ends (a spend cap)."""
    from escalator.model.holds import resumes_at

    if not isinstance(exc, ApiBlocked):
        return ""
    ends = resumes_at(exc.kind, str(exc), time.time())
    return "" if ends is None else f"; the API says access resumes at {_iso(ends)}"


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def _classified(model: str, a: Attempt) -> Check:
    tokens = (
        f"{a.input_tokens} in + {a.cache_write_tokens} cache write + {a.cache_read_tokens} "
        f"cache read, {a.output_tokens} out"
    )
    detail = (
        f"{a.label} {a.confidence:.2f}, stop_reason {a.stop_reason}, {tokens}, "
        f"{a.latency_ms:.0f} ms, {_usd(a.cost_usd)}, request-id {a.request_id}"
    )
    if a.valid:
        return Check(f"classify {model}", True, detail)
    why = "refused" if a.refused else a.error
    return Check(f"classify {model}", False, f"invalid answer ({why}): {detail}")


def _cached(model: str, first: Attempt, second: Attempt, minimum: int) -> Check:
    if second.cache_read_tokens:
        return Check(
            f"cache {model}", True, f"second call read {second.cache_read_tokens} cached tokens"
        )
    prefix = first.cache_write_tokens or first.input_tokens
    # A cost to know about, not a fault: the calls work, at full input price.
    return Check(
        f"cache {model}",
        True,
        f"nothing was cached: the prompt has about {prefix} tokens, below {model}'s minimum "
        f"cacheable prefix of {minimum} (the API caches nothing below it and says nothing); "
        "every call pays full input price",
        note=True,
    )


async def check_kafka(settings: Settings) -> list[Check]:
    from escalator.kafka.clients import KafkaUnreachable, check_connection, topic_partitions

    try:
        address = await check_connection(settings.kafka, timeout_s=10)
    except KafkaUnreachable as exc:
        return [Check("kafka", False, str(exc))]
    checks = [Check("kafka", True, f"{address} answers ({settings.kafka.security_protocol})")]
    rv, t = settings.review, settings.topics
    review_on = rv.human_tier or rv.adjudicate_agree > 0 or rv.adjudicate_disagree > 0
    for topic in t.all():
        if not review_on and topic in (t.reviews, t.adjudications):
            # Not an error while nothing writes them; `topics create` still makes them.
            checks.append(Check(f"topic {topic}", True, "not used (human tier, adjudication off)"))
            continue
        try:
            partitions = await topic_partitions(settings.kafka, topic)
        except EscalatorError:
            checks.append(Check(f"topic {topic}", False, "missing: run `escalator topics create`"))
            continue
        detail = f"{len(partitions)} partitions"
        if topic in (t.requests, t.escalations, t.reviews, t.adjudications, t.parked):
            detail += f"; {await _retention(settings, topic)}"
        if topic == t.parked:
            checks.append(await _parked(settings, detail))
            continue
        checks.append(Check(f"topic {topic}", True, detail))
    return checks


async def _retention(settings: Settings, topic: str) -> str:
    from escalator.kafka.admin import describe_configs
    from escalator.kafka.retention import TopicRetention

    configs = await describe_configs(settings.kafka, [topic])
    return TopicRetention.from_configs(topic, configs.get(topic, {})).describe()


async def _parked(settings: Settings, detail: str) -> Check:
    """The parked topic: records waiting for ``escalator parked replay`` fail the check."""
    from escalator.kafka.parked import scan_parked

    topic = settings.topics.parked
    scan = await scan_parked(settings)
    if scan.total == 0:
        return Check(f"topic {topic}", True, f"{detail}; nothing waits to be replayed")
    since = _iso(scan.held_since_ms / 1000) if scan.held_since_ms is not None else "?"
    ends = f", the API said it ends at {scan.hold_ends_at}" if scan.hold_ends_at else ""
    reasons = ", ".join(sorted({reason for _, reason in scan.waiting}))
    return Check(
        f"topic {topic}",
        False,
        f"{detail}; {scan.total} parked record(s) wait for `escalator parked replay`, from a "
        f"hold ({reasons or '?'}) that began at {since}{ends}",
    )


async def check_service(settings: Settings) -> list[Check]:
    """The holds of a service on this host (``/readyz`` on the metrics port), if one runs."""
    import aiohttp

    port = settings.metrics_port
    if not port:
        return []
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url) as response,
        ):
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return [Check("service", True, f"no Escalator service answers {url} (run doctor in a "
                      "tier's pod to see its holds)")]  # fmt: skip
    checks = []
    for tier in body.get("tiers", []) if isinstance(body, dict) else []:
        name = f"service {tier.get('tier')}"
        if not tier.get("held"):
            state = "joined" if tier.get("joined") else "not joined yet"
            checks.append(Check(name, bool(tier.get("joined")), f"{state}; not held"))
            continue
        ends = tier.get("hold_ends")
        checks.append(
            Check(
                name,
                False,
                f"held ({tier.get('held')}) since {tier.get('held_since') or '?'}"
                + (
                    f"; the API says it ends at {ends}"
                    if ends
                    else "; no end date: someone must act"
                )
                + f": {tier.get('message')}",
            )
        )
    return checks


async def run_doctor(settings: Settings) -> list[Check]:
    from escalator.model.stack import anthropic_client

    checks: list[Check] = []
    client = anthropic_client(settings)
    try:
        for tier in ("cheap", "strong"):
            checks += await check_model_end_to_end(settings, tier, client)
    finally:
        await client.close()
    if settings.kafka.bootstrap_servers:
        checks += await check_kafka(settings)
    else:
        checks.append(Check("kafka", False, "KAFKA_BOOTSTRAP_SERVERS is not set"))
    checks += await check_service(settings)
    return checks


def cmd_doctor(args: argparse.Namespace) -> int:
    from escalator.cli._common import settings_from_env

    settings = settings_from_env(require_kafka=False)
    base = settings.model.base_url
    if settings.model.api_key is None and base is None:
        raise ConfigError(
            "set ANTHROPIC_API_KEY (the Claude API), or ANTHROPIC_BASE_URL to an emulator "
            "(`escalator sim` prints its URL)"
        )
    # Never print credentials a proxy URL may carry (https://user:token@host).
    where = f"the API at {redacted_url(base)}" if base else "the Claude API"
    if settings.model.simulated:
        where += " (no ANTHROPIC_API_KEY: simulated answers)"
    print(f"escalator doctor: checking against {where}")
    started = time.monotonic()
    checks = asyncio.run(run_doctor(settings))
    for check in checks:
        print(check.line(), flush=True)
    failed = [c.name for c in checks if not c.ok]
    took = time.monotonic() - started
    if failed:
        raise EscalatorError(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}")
    notes = sum(c.note for c in checks)
    noted = f" ({notes} note{'s' if notes > 1 else ''} above)" if notes else ""
    print(f"all {len(checks)} checks passed in {took:.1f} s{noted}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check the models, prices, prompt cache, rate limits and Kafka topics before "
        "running (exit 2 naming what failed)",
    )
    doctor.set_defaults(func=cmd_doctor)
