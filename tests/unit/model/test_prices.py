"""Cost arithmetic against hand-computed values, and price-table validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalator.errors import ConfigError
from escalator.model.prices import PriceTable, Usage, load_prices

TABLE = load_prices(None)


@pytest.mark.parametrize(
    ("model", "usage", "expected_usd"),
    [
        # Haiku 5.5: $0.10 in, $0.50 out, $0.125 cache write, $0.01 cache read per MTok.
        ("claude-haiku-5-5", Usage(100_000, 0, 0, 0), 0.01),  # exactly at the band edge
        ("claude-haiku-5-5", Usage(0, 1_000_000, 0, 0), 0.50),
        ("claude-haiku-5-5", Usage(0, 0, 100_000, 0), 0.0125),
        ("claude-haiku-5-5", Usage(0, 0, 0, 100_000), 0.001),
        ("claude-haiku-5-5", Usage(0, 0, 0, 1_000_000), 0.05),  # long prompt: 5 x $0.01
        # 100 in + 10 out + 1300 read = 1e-5 + 5e-6 + 1.3e-5
        ("claude-haiku-5-5", Usage(100, 10, 0, 1300), 2.8e-5),
        # 100 in + 10 out + 1300 written = 1e-5 + 5e-6 + 1.625e-4
        ("claude-haiku-5-5", Usage(100, 10, 1300, 0), 1.775e-4),
        # Over 100k prompt tokens (input + cache): every rate x5, output included.
        ("claude-haiku-5-5", Usage(100_001, 1000, 0, 0), (100_001 * 0.10 + 1000 * 0.50) * 5 / 1e6),
        (
            "claude-haiku-5-5",
            Usage(50_000, 0, 30_000, 20_001),
            (50_000 * 0.1 + 30_000 * 0.125 + 20_001 * 0.01) * 5 / 1e6,
        ),
        (
            "claude-haiku-5-5",
            Usage(50_000, 0, 30_000, 20_000),
            (50_000 * 0.1 + 30_000 * 0.125 + 20_000 * 0.01) / 1e6,
        ),
        # Sonnet 5.5: $2 in, $10 out, $2.50 write, $0.10 read; no long-prompt band.
        ("claude-sonnet-5-5", Usage(200, 12, 0, 1300), (200 * 2 + 12 * 10 + 1300 * 0.10) / 1e6),
        ("claude-sonnet-5-5", Usage(200, 12, 1300, 0), (200 * 2 + 12 * 10 + 1300 * 2.5) / 1e6),
        ("claude-sonnet-5-5", Usage(200_000, 0, 0, 0), 0.4),
        ("claude-sonnet-5-5", Usage(), 0.0),
        # Fable 5.2: $8 in, $40 out, $10 5-minute write, $16 1-hour write, $0.20 read.
        ("claude-fable-5-2", Usage(200, 12, 1300, 0), (200 * 8 + 12 * 40 + 1300 * 10) / 1e6),
        ("claude-fable-5-2", Usage(0, 0, 1000, 0, 1000), 1000 * 16 / 1e6),
        ("claude-fable-5-2", Usage(0, 0, 0, 1000), 1000 * 0.2 / 1e6),
        # A dated snapshot is priced by its family's row.
        ("claude-haiku-4-5-20251001", Usage(1000, 100, 0, 0), (1000 * 1 + 100 * 5) / 1e6),
    ],
)
def test_cost(model: str, usage: Usage, expected_usd: float) -> None:
    """Each token type is priced at its own rate; cache reads are not billed as input."""
    assert TABLE.cost_usd(model, usage) == pytest.approx(expected_usd, rel=1e-12)


@pytest.mark.parametrize(
    ("model", "usage", "expected_usd"),
    [
        # Haiku 5.5 at half price: 1,000 in at $0.05, 100 out at $0.25 per MTok.
        (
            "claude-haiku-5-5",
            Usage(1000, 100, service_tier="batch"),
            (1000 * 0.05 + 100 * 0.25) / 1e6,
        ),
        # Stacks with caching: 5-minute write at $0.0625, 1-hour at $0.10, read at $0.005.
        (
            "claude-haiku-5-5",
            Usage(0, 0, 2000, 3000, 500, service_tier="batch"),
            (1500 * 0.0625 + 500 * 0.10 + 3000 * 0.005) / 1e6,
        ),
        # Stacks with US inference (x1.1) and with Haiku 5.5's long-prompt band (x5).
        (
            "claude-sonnet-5-5",
            Usage(1000, 10, inference_geo="us", service_tier="batch"),
            (1000 * 2 + 10 * 10) * 1.1 * 0.5 / 1e6,
        ),
        (
            "claude-haiku-5-5",
            Usage(100_001, 1000, service_tier="batch"),
            (100_001 * 0.10 + 1000 * 0.50) * 5 * 0.5 / 1e6,
        ),
        # The standard and priority tiers, and no tier at all, are the list price.
        (
            "claude-fable-5-2",
            Usage(1000, 100, service_tier="standard"),
            (1000 * 8 + 100 * 40) / 1e6,
        ),
        (
            "claude-fable-5-2",
            Usage(1000, 100, service_tier="priority"),
            (1000 * 8 + 100 * 40) / 1e6,
        ),
        ("claude-fable-5-2", Usage(1000, 100), (1000 * 8 + 100 * 40) / 1e6),
    ],
)
def test_batch_usage_costs_half_and_stacks_with_the_other_multipliers(
    model: str, usage: Usage, expected_usd: float
) -> None:
    """usage.service_tier "batch" halves every token type, on top of cache, geo and band."""
    assert TABLE.cost_usd(model, usage) == pytest.approx(expected_usd, rel=1e-12)


def test_a_batch_costs_exactly_half_of_the_same_usage_in_real_time() -> None:
    """For every model of the table, the same usage costs 50% on the batch tier."""
    for model in TABLE.prices:
        usage = Usage(12_345, 678, 900, 4_000, 300, inference_geo="us")
        batch = Usage(12_345, 678, 900, 4_000, 300, inference_geo="us", service_tier="batch")
        assert TABLE.cost_usd(model, batch) == pytest.approx(0.5 * TABLE.cost_usd(model, usage))


def test_unknown_model_is_a_startup_error_not_zero() -> None:
    """A model without a price fails at start-up, naming the model."""
    with pytest.raises(ConfigError, match="claude-new-9"):
        TABLE.require("claude-haiku-5-5", "claude-new-9")


def test_dated_snapshots_pass_the_start_up_check_and_retired_models_keep_their_price() -> None:
    """The dated id the models page documents passes the check that the bare alias passes;
    Sonnet 4.5, retired on 2026-11-30, keeps its row so that old decisions can be priced."""
    TABLE.require("claude-haiku-4-5-20251001", "claude-haiku-4-5", "claude-fable-5-2")
    assert TABLE.cost_usd("claude-sonnet-4-5-20250929", Usage(1000, 0, 0, 0)) == 0.003
    with pytest.raises(ConfigError, match="claude-haiku-4-5-2025"):
        TABLE.require("claude-haiku-4-5-2025")  # not a dated snapshot: no family


def test_override_file(tmp_path: Path) -> None:
    """A prices file replaces the table and carries its own version."""
    path = tmp_path / "prices.json"
    path.write_text(
        '{"version": "negotiated-2026", "models": {"m": {"input": 1, "output": 2, '
        '"cache_write": 1.25, "cache_read": 0.1}}}'
    )
    table = load_prices(path)
    assert table.version == "negotiated-2026"
    assert table.cost_usd("m", Usage(1_000_000, 1_000_000, 0, 0)) == pytest.approx(3.0)
    with pytest.raises(ConfigError):
        table.require("claude-haiku-5-5")


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"models": {}}',
        '{"models": {"m": {"input": 1}}}',
        '{"models": {"m": {"input": -1, "output": 1, "cache_write": 1, "cache_read": 1}}}',
    ],
)
def test_bad_price_files_are_rejected(tmp_path: Path, content: str) -> None:
    """Malformed price files fail with a ConfigError naming the variable."""
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="ESCALATOR_PRICES_FILE"):
        load_prices(path)


def test_table_type() -> None:
    """The default table knows both default models."""
    assert isinstance(TABLE, PriceTable)
    TABLE.require("claude-haiku-5-5", "claude-sonnet-5-5")
