"""Tier 0 in the cheap tier (tiers/handlers.py, ``CheapHandler._tier0``; app.py's
``load_parts``): a confident answer is delivered at once with no model call, anything else goes
to the model as without tier 0, and an artefact that does not fit is refused at start-up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from escalator.app import load_parts
from escalator.config import load_settings
from escalator.contract.decisions import Decision
from escalator.errors import ConfigError
from escalator.observability.metrics import Metrics
from escalator.tier0 import artefact
from escalator.tier0.model import Features
from escalator.tier0.train import fit
from escalator.tiers.handlers import CheapHandler
from tests.integration.harness import validator
from tests.unit.tiers.test_handlers import TASK, FakeModel, FakeRecord, handler, ok, on, request


@dataclass
class FakeTier0:
    """A LocalAnswers: fixed answers per text, and the batches it was asked."""

    answers: dict[str, tuple[str, float]]
    version: str = "t0-0123456789"
    threshold: float = 0.9
    sample_rate: float = 0.0
    active: bool = True
    asked: list[list[str]] = field(default_factory=list)
    observed: list[tuple[float, float]] = field(default_factory=list)

    def observe(self, loss: float, probability: float) -> None:
        self.observed.append((loss, probability))

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        self.asked.append(list(texts))
        return [self.answers[t] for t in texts]


def _cheap(tier0: FakeTier0, model: FakeModel, metrics: Metrics | None = None) -> CheapHandler:
    h: CheapHandler = handler(CheapHandler, model, tier0=tier0, metrics=metrics or Metrics())
    return h


def test_a_confident_answer_is_delivered_at_once_with_no_model_call() -> None:
    """Above the threshold: a list (no coroutine, so no task), a result with tier tier0 and a
    decision with the artefact's version, both valid against the schemas; the model is never
    asked; the decisions counter counts it under tier tier0."""
    model, metrics = FakeModel(lambda _: ok()), Metrics()
    tier0 = FakeTier0({"hello friend": ("safe", 0.97)})
    h = _cheap(tier0, model, metrics)
    out = h.handle(FakeRecord(request("hello friend"), key=b"k"))
    assert isinstance(out, list)
    assert model.calls == 0 and tier0.asked == [["hello friend"]]
    (result,) = on(out, "results")
    (decided,) = on(out, "decisions")
    assert on(out, "escalations") == []
    value = orjson.loads(result.value)
    validator("result.v1.json").validate(value)
    assert (value["tier"], value["label"], value["model"]) == ("tier0", "safe", tier0.version)
    assert value["escalated"] is False and value["cost_usd"] == 0
    assert result.key == b"k" and decided.key == b"k"
    record = orjson.loads(decided.value)
    validator("decision.v1.json").validate(record)
    d = Decision.from_json(decided.value)
    assert (d.tier, d.outcome, d.tier0_version, d.threshold) == (
        "tier0",
        "accepted",
        tier0.version,
        0.9,
    )
    text = metrics.exposition().decode()
    assert 'escalator_decisions_total{label="safe",outcome="accepted",tier="tier0"} 1.0' in text


@pytest.mark.parametrize(
    "answer",
    [("safe", 0.89), ("not-a-label", 0.99)],
    ids=["below-threshold", "label-not-in-task"],
)
async def test_anything_else_goes_to_the_model_as_without_tier0(answer: tuple[str, float]) -> None:
    """Below the certified threshold (or a label the task does not have): the model is asked
    and the result is the cheap tier's, exactly as without tier 0."""
    model = FakeModel(lambda _: ok(confidence=0.95))
    h = _cheap(FakeTier0({"hello friend": answer}), model)
    work = h.handle(FakeRecord(request("hello friend")))
    assert not isinstance(work, list)
    out = await work
    assert model.calls == 1
    (result,) = on(out, "results")
    assert orjson.loads(result.value)["tier"] == "cheap"
    assert all(Decision.from_json(o.value).tier0_version is None for o in on(out, "decisions"))


def test_bad_input_is_dead_lettered_before_tier0_is_asked() -> None:
    tier0 = FakeTier0({})
    out = _cheap(tier0, FakeModel(lambda _: ok())).handle(FakeRecord(b"not json"))
    assert isinstance(out, list) and len(on(out, "dead")) == 1
    assert tier0.asked == []


# -- start-up: ESCALATOR_TIER0_FILE ----------------------------------------------------------
CHEAP, STRONG = "claude-haiku-5-5", "claude-sonnet-5-5"


def write_artefact(tmp_path: Path, **changes: Any) -> Path:
    """A certified artefact for the bundled task and the default model pair (or ``changes``)."""
    texts = ["have a nice day", "i will hurt you", "is this allowed here"] * 4
    model = fit(texts, [TASK.labels[i % 3] for i in range(len(texts))], features=Features(bits=12))
    path = tmp_path / "tier0.json"
    body: dict[str, Any] = {
        "status": "certified",
        "task": {"name": TASK.name, "fingerprint": TASK.fingerprint, "labels": list(TASK.labels)},
        "models": {"cheap": CHEAP, "strong": STRONG},
        "classes": list(model.classes),
        "features": model.features.as_json(),
        "weights": artefact.write_weights(model, path),
        "threshold": 0.9,
        "certification": {"target": 0.98},
    }
    body.update(changes)
    artefact.write_manifest(path, body)
    return path


def _settings(path: Path) -> Any:
    return load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
            "ESCALATOR_CHEAP_MODEL": CHEAP,
            "ESCALATOR_STRONG_MODEL": STRONG,
            "ESCALATOR_TIER0_FILE": str(path),
        }
    )


def test_a_fitting_artefact_is_loaded_for_the_cheap_tier_only(tmp_path: Path) -> None:
    path = write_artefact(tmp_path)
    parts = load_parts(_settings(path), ["cheap", "strong"])
    assert parts.tier0 is not None and parts.tier0.threshold == 0.9
    assert parts.tier0.predict(["have a nice day"])[0][0] in TASK.labels
    assert load_parts(_settings(path), ["strong"]).tier0 is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"models": {"cheap": "claude-haiku-4-5", "strong": STRONG}}, "learned from"),
        ({"task": {"name": "x", "fingerprint": "other", "labels": ["a", "b"]}}, "fingerprint"),
        ({"status": "trained", "threshold": None}, "not certified"),
    ],
)
def test_an_artefact_that_does_not_fit_is_a_start_up_error_naming_the_variable(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = write_artefact(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message) as err:
        load_parts(_settings(path), ["cheap", "strong"])
    assert str(err.value).startswith("ESCALATOR_TIER0_FILE=")
    assert "\n" not in str(err.value)


def test_a_missing_file_is_refused_when_settings_are_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ESCALATOR_TIER0_FILE"):
        _settings(tmp_path / "absent.json")


async def test_a_fetched_batch_is_predicted_in_one_call_and_answered_in_order() -> None:
    """handle_batch (what the engine calls per partition of a fetched batch): bad input is
    dead-lettered without a prediction, tier 0 is asked once for the other texts together,
    and each record gets what ``handle`` would give it, in order: a list for tier 0's
    confident answers and the dead letter, a coroutine (a model call) for the rest."""
    model = FakeModel(lambda _: ok())
    tier0 = FakeTier0({"a": ("safe", 0.95), "b": ("safe", 0.5), "c": ("unsafe", 0.99)})
    h = _cheap(tier0, model)
    records = [
        FakeRecord(request("a"), offset=0),
        FakeRecord(b"{not json", offset=1),
        FakeRecord(request("b"), offset=2),
        FakeRecord(request("c"), offset=3),
    ]
    works = h.handle_batch(records)
    assert tier0.asked == [["a", "b", "c"]], "one prediction for the batch, bad input left out"
    assert [isinstance(w, list) for w in works] == [True, True, False, True]
    assert on(works[0], "results") and on(works[3], "results")  # type: ignore[arg-type]
    assert [o.topic for o in works[1]] == ["dead"]  # type: ignore[union-attr]
    assert model.calls == 0
    outputs = await works[2]  # type: ignore[misc]
    assert model.calls == 1 and on(outputs, "results")
