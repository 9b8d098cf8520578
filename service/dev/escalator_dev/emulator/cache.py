"""Prompt caching as the emulator plays it: breakpoints, reads, writes and their TTLs.

Prompt caching: a ``cache_control`` marker on a block makes the prefix up to it cacheable,
with TTL ``5m`` (default) or ``1h``; below the model's minimum nothing is cached and no error
is returned; an entry is usable only once the response that wrote it has begun; each read
refreshes the TTL. The top-level ``cache_control`` of the request "automatically applies a
cache_control marker to the last cacheable block in the request" (the pinned SDK's
``MessageCreateParams``). A request reads the longest marked prefix that is cached and writes
the rest up to its last marker. The key includes the model, the output schema, the thinking
mode, the speed and the TTL (changing the output format or thinking invalidates the cache;
whether a 5-minute request may read a 1-hour entry is not documented: separate entries).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from escalator_dev.emulator.models import ModelSpec
from escalator_dev.emulator.rules import Settings, schema_key, tokens

TTL_S = {"5m": 300.0, "1h": 3600.0}


@dataclass(slots=True)
class CacheEntry:
    readable_at: float
    expires_at: float


@dataclass(slots=True)
class CachePlan:
    """What one request reads and writes."""

    #: Tokens read from the cache, and written to it (with the TTL of the last marker).
    read: int = 0
    created: int = 0
    ttl: str = "5m"
    #: Tokens of the prompt covered by the cache (read or written): not billed as input.
    covered: int = 0
    hit_key: tuple[str, ...] | None = None
    writes: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


def _blocks(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(text, marker TTL or None) of every block, system first, then the messages."""
    out: list[tuple[str, str | None]] = []
    system = body.get("system")
    if isinstance(system, str):
        out.append((system, None))
    elif isinstance(system, list):
        out += [(str(b.get("text", "")), _ttl(b)) for b in system if isinstance(b, dict)]
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            out.append((content, None))
        elif isinstance(content, list):
            out += [(str(b.get("text", "")), _ttl(b)) for b in content if isinstance(b, dict)]
    return out


def _ttl(block: dict[str, Any]) -> str | None:
    marker = block.get("cache_control")
    if not isinstance(marker, dict):
        return None
    return "1h" if marker.get("ttl") == "1h" else "5m"


def plan(
    spec: ModelSpec,
    body: dict[str, Any],
    settings: Settings,
    cache: dict[tuple[str, ...], CacheEntry],
    now: float,
) -> CachePlan:
    blocks = _blocks(body)
    if settings.auto_cache_ttl is not None and blocks and blocks[-1][1] is None:
        blocks[-1] = (blocks[-1][0], settings.auto_cache_ttl)
    breakpoints: list[tuple[int, str, str]] = []  # (tokens, ttl, digest) per marker
    text = ""
    for block, ttl in blocks:
        text += block
        if ttl is not None:
            n = tokens(text, spec.tokenizer_factor)
            if n >= spec.cache_min_tokens:
                breakpoints.append((n, ttl, hashlib.sha256(text.encode()).hexdigest()))
    result = CachePlan()
    if not breakpoints:
        return result
    common = (spec.id, schema_key(settings.schema), settings.thinking, settings.speed)
    hit = 0
    for n, ttl, digest in breakpoints:
        key = (*common, digest, ttl)
        entry = cache.get(key)
        if entry is not None and entry.readable_at <= now < entry.expires_at:
            hit, result.hit_key = n, key
    last, last_ttl, _ = breakpoints[-1]
    result.read = hit
    result.covered = max(hit, last)
    if last > hit:
        result.created = last - hit
        result.ttl = last_ttl
        result.writes = [
            ((*common, digest, ttl), TTL_S[ttl]) for n, ttl, digest in breakpoints if n > hit
        ]
    return result


def settle(plan_: CachePlan, cache: dict[tuple[str, ...], CacheEntry], done: float) -> None:
    """The response is on its way: refresh what was read, make what was written readable."""
    if plan_.hit_key is not None:
        entry = cache.get(plan_.hit_key)
        if entry is not None:
            entry.expires_at = done + TTL_S[plan_.hit_key[-1]]
    for key, ttl_s in plan_.writes:
        cache[key] = CacheEntry(readable_at=done, expires_at=done + ttl_s)
