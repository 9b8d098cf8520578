"""Per-model, per-token-type prices, and the cost of one model call.

Defaults, per million tokens, from Anthropic's model overview and pricing pages as stored on
2026-11-28 (platform.claude.com/docs/en/about-claude/pricing and
.../models/haiku-5-5/overview, .../models/sonnet-5-5/overview):

| model             | input | output | 5m cache write | 1h cache write | cache read |
| claude-haiku-5-5  | 0.10  | 0.50   | 0.125          | 0.20           | 0.01       |
| claude-sonnet-5-5 | 2.00  | 10.00  | 2.50           | 4.00           | 0.10       |
| claude-fable-5-2  | 8.00  | 40.00  | 10.00          | 16.00          | 0.20       |

Claude Fable 5.2 (released 2026-11-09) is not in the stored copy of the pricing page, which
predates it; its row is the list price as published on platform.claude.com and quoted, checked
2026-12-01, by two public price trackers (docs/SIMULATOR.md says which): 20% below Fable 5.1.

Haiku 5.5 bills a request whose prompt (input + cache reads + cache writes) exceeds 100,000
tokens at 5x every rate, output included. Sonnet 5.5's cache-read price was cut from $0.20
to $0.10 on 2026-10-07 (0.05x input); some stored copies of the model page still show $0.20.
Cache writes are priced by TTL, as billed: ``usage.cache_creation`` splits them into 5-minute
(1.25x input) and 1-hour (2x input) writes. Inference pinned to the US (``inference_geo:
"us"``) costs 1.1x on every token type, on Claude Opus 4.6, Sonnet 4.6 and later models.
The Message Batches API bills every token type at 50% ("All usage is charged at 50% of the
standard API prices"; usage says ``service_tier: "batch"``), stacking with the cache, geo and
long-prompt multipliers (:data:`SERVICE_TIER_MULTIPLIERS`).

Override the whole table with ESCALATOR_PRICES_FILE (JSON, same shape as DEFAULT_TABLE).
A dated snapshot id (``claude-haiku-4-5-20251001``) is priced by its family's row, as
``profiles.family`` finds it. An unknown model is a start-up error, never $0. Claude Sonnet
4.5 retired on 2026-11-30: the profiles refuse it at start-up (``profiles.RETIRED``), and its
row stays so that ``escalator report`` can still price the decisions it made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from escalator.errors import ConfigError
from escalator.model.profiles import family

MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float
    long_prompt_tokens: int | None = None
    long_prompt_multiplier: float = 1.0
    #: 1-hour cache writes; None means the documented 2x input.
    cache_write_1h: float | None = None
    #: Price multiplier per ``usage.inference_geo`` value (e.g. ``{"us": 1.1}``).
    geo_multipliers: tuple[tuple[str, float], ...] = ()

    @property
    def write_1h(self) -> float:
        return self.cache_write_1h if self.cache_write_1h is not None else 2.0 * self.input

    def geo_multiplier(self, geo: str | None) -> float:
        for name, factor in self.geo_multipliers:
            if name == geo:
                return factor
        return 1.0


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    #: The part of ``cache_write_tokens`` written with the 1-hour TTL.
    cache_write_1h_tokens: int = 0
    inference_geo: str | None = None
    #: ``usage.service_tier``: "standard", "priority" or "batch" (None: standard).
    service_tier: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens


#: Price multiplier per ``usage.service_tier`` (Pricing, Batch processing: 50% for batches).
SERVICE_TIER_MULTIPLIERS: dict[str, float] = {"batch": 0.5}

DEFAULT_VERSION = "anthropic-2026-12-01"
US = {"us": 1.1}
DEFAULT_TABLE: dict[str, dict[str, object]] = {
    "claude-haiku-5-5": {
        "input": 0.10,
        "output": 0.50,
        "cache_write": 0.125,
        "cache_write_1h": 0.20,
        "cache_read": 0.01,
        "long_prompt_tokens": 100_000,
        "long_prompt_multiplier": 5.0,
        "inference_geo": US,
    },
    "claude-sonnet-5-5": {
        "input": 2.0,
        "output": 10.0,
        "cache_write": 2.50,
        "cache_write_1h": 4.0,
        "cache_read": 0.10,
        "inference_geo": US,
    },
    "claude-opus-5-5": {
        "input": 4.0,
        "output": 20.0,
        "cache_write": 5.0,
        "cache_write_1h": 8.0,
        "cache_read": 0.20,
        "inference_geo": US,
    },
    "claude-fable-5-1": {
        "input": 10.0,
        "output": 50.0,
        "cache_write": 12.5,
        "cache_write_1h": 20.0,
        "cache_read": 0.25,
        "inference_geo": US,
    },
    "claude-fable-5-2": {
        "input": 8.0,
        "output": 40.0,
        "cache_write": 10.0,
        "cache_write_1h": 16.0,
        "cache_read": 0.20,
        "inference_geo": US,
    },
    "claude-haiku-4-5": {
        "input": 1.0,
        "output": 5.0,
        "cache_write": 1.25,
        "cache_write_1h": 2.0,
        "cache_read": 0.10,
    },
    "claude-sonnet-4-6": {
        "input": 3.0,
        "output": 15.0,
        "cache_write": 3.75,
        "cache_write_1h": 6.0,
        "cache_read": 0.30,
        "inference_geo": US,
    },
    # Retired 2026-11-30: kept to price the decisions it made (escalator report).
    "claude-sonnet-4-5": {
        "input": 3.0,
        "output": 15.0,
        "cache_write": 3.75,
        "cache_write_1h": 6.0,
        "cache_read": 0.30,
    },
}


@dataclass(frozen=True, slots=True)
class PriceTable:
    version: str
    prices: dict[str, Price]

    def price(self, model: str) -> Price:
        """The row for ``model`` or its dated snapshot's family (KeyError: none)."""
        key = family(model, self.prices)
        if key is None:
            raise KeyError(model)
        return self.prices[key]

    def require(self, *models: str) -> None:
        """Fail at start-up for a model without a price."""
        missing = [m for m in models if family(m, self.prices) is None]
        if missing:
            raise ConfigError(
                f"no price for model(s) {', '.join(missing)} in price table {self.version}; "
                "add them with ESCALATOR_PRICES_FILE"
            )

    def cost_usd(self, model: str, usage: Usage) -> float:
        price = self.price(model)
        mult = price.geo_multiplier(usage.inference_geo)
        mult *= SERVICE_TIER_MULTIPLIERS.get(usage.service_tier or "standard", 1.0)
        if price.long_prompt_tokens is not None and usage.prompt_tokens > price.long_prompt_tokens:
            mult *= price.long_prompt_multiplier
        writes_1h = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
        total = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + (usage.cache_write_tokens - writes_1h) * price.cache_write
            + writes_1h * price.write_1h
            + usage.cache_read_tokens * price.cache_read
        )
        return total * mult / MTOK


def _parse(table: object, source: str) -> dict[str, Price]:
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{source}: must map model names to prices")
    out: dict[str, Price] = {}
    for model, row in table.items():
        if not isinstance(row, dict):
            raise ConfigError(f"{source}: {model}: must be an object")
        try:
            values = {k: float(row[k]) for k in ("input", "output", "cache_write", "cache_read")}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{source}: {model}: needs numeric input, output, cache_write, cache_read"
            ) from exc
        if any(not v >= 0 or v == float("inf") for v in values.values()):
            raise ConfigError(f"{source}: {model}: prices must be finite and not negative")
        long_tokens = row.get("long_prompt_tokens")
        write_1h = row.get("cache_write_1h")
        geo = row.get("inference_geo") or {}
        try:
            geo_multipliers = tuple((str(k), float(v)) for k, v in dict(geo).items())
            out[str(model)] = Price(
                **values,
                long_prompt_tokens=int(long_tokens) if long_tokens is not None else None,
                long_prompt_multiplier=float(row.get("long_prompt_multiplier", 1.0)),
                cache_write_1h=float(write_1h) if write_1h is not None else None,
                geo_multipliers=geo_multipliers,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{source}: {model}: cache_write_1h, long_prompt_* must be numbers and "
                'inference_geo an object like {"us": 1.1}'
            ) from exc
    return out


def load_prices(path: Path | None) -> PriceTable:
    if path is None:
        return PriceTable(DEFAULT_VERSION, _parse(DEFAULT_TABLE, "default price table"))
    source = f"ESCALATOR_PRICES_FILE={path}"
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a JSON object")
    version = str(data.get("version") or path.name)
    return PriceTable(version, _parse(data.get("models"), source))
