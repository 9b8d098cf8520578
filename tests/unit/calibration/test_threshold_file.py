"""The thresholds file and the ledger (calibration/threshold_file.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from escalator.calibration.curves import baselines
from escalator.calibration.search import calibrate
from escalator.calibration.threshold_file import load_threshold_file
from escalator.errors import ConfigError
from tests.unit.calibration import worlds


def test_threshold_body_short_form_is_the_full_form_less_its_detail(tmp_path: Path) -> None:
    """The demo's short form (detail=False) keeps every value the full form has under the same
    keys, drops only the detail, and loads to the same thresholds."""
    from escalator.calibration.threshold_file import (
        load_threshold_file,
        threshold_body,
        write_threshold_file,
    )

    d = worlds.log(worlds.realistic(), np.random.default_rng(4), 4000, p=1.0)
    cal = calibrate(d, target=0.95, delta=0.05)
    base = baselines(d, float(cal.curve.escalation[cal.chosen]))
    common: dict[str, Any] = {
        "source": "test",
        "delta": 0.05,
        "window": {"first_ts_ms": 0, "last_ts_ms": 1},
        "price_table_version": "p1",
        "base": base,
    }
    full = threshold_body(cal, d, **common)
    short = threshold_body(cal, d, **common, detail=False)
    assert set(full) - set(short) == {"labels", "baselines"}
    assert set(full["procedure"]) - set(short["procedure"]) == {
        "delta_spent",
        "spending",
        "ledger",
        "margin",
        "guarantee",
        "assumptions",
    }
    assert short["procedure"] == {k: full["procedure"][k] for k in short["procedure"]}
    assert short["dataset"] == {k: full["dataset"][k] for k in ("sha256", "requests")}
    for key in set(short) - {"procedure", "dataset"}:
        assert short[key] == full[key], key
    loaded = []
    for name, body in (("full", full), ("short", short)):
        write_threshold_file(tmp_path / name, body)
        t = load_threshold_file(
            tmp_path / name, labels=tuple(worlds.LABELS), cheap_model="cheap", strong_model="strong"
        )
        loaded.append((t.default, t.per_label, t.expected_escalation))
    assert loaded[0] == loaded[1] and loaded[0][0] == cal.threshold


def test_threshold_file_strong_key_is_optional_and_checked(tmp_path: Path) -> None:
    """Files without "strong" load as before (None); a malformed one is a ConfigError."""
    base = {
        "schema_version": 1,
        "version": "x",
        "threshold": 0.8,
        "label_thresholds": {},
        "models": {"cheap": "c", "strong": "s"},
    }
    path = tmp_path / "t.json"
    path.write_bytes(orjson.dumps(base))
    th = load_threshold_file(path, labels=("a",), cheap_model="c", strong_model="s")
    assert th.strong_default is None and dict(th.strong_per_label) == {}
    path.write_bytes(orjson.dumps({**base, "strong": {"default": 0.6, "per_label": {"a": 0.9}}}))
    th = load_threshold_file(path, labels=("a",), cheap_model="c", strong_model="s")
    assert th.strong_default == 0.6 and th.strong_for("a") == 0.9
    for bad in ({"default": "x"}, {"per_label": {"zz": 0.5}}, [1]):
        path.write_bytes(orjson.dumps({**base, "strong": bad}))
        with pytest.raises(ConfigError):
            load_threshold_file(path, labels=("a",), cheap_model="c", strong_model="s")
