"""The task: its output schema and its label rules."""

from __future__ import annotations

import pytest

from escalator.errors import ConfigError
from escalator.model.task import load_task, parse_task

TASK = load_task(None)


def test_the_output_schema_uses_only_supported_keywords() -> None:
    """No numerical or string constraints (documented 400s); every object closed."""
    schema = TASK.output_schema()
    confidence = schema["properties"]["confidence"]
    assert confidence["type"] == "number"
    assert not {"minimum", "maximum", "multipleOf"} & set(confidence)
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("safe", "safe"), ("SAFE", "safe"), ("Review-Needed", "review-needed"), ("nope", None)],
)
def test_labels_are_matched_case_insensitively(answer: str, expected: str | None) -> None:
    """Enum values may come back in another capitalization; the task's spelling wins."""
    assert TASK.canonical_label(answer) == expected


def test_refusal_label_must_be_one_of_the_labels_and_labels_must_differ_in_more_than_case() -> None:
    """Both are start-up errors naming the task file."""
    with pytest.raises(ConfigError, match="refusal_label"):
        parse_task(b'{"labels": ["a", "b"], "instructions": "x", "refusal_label": "c"}', "F")
    with pytest.raises(ConfigError, match="capitalization"):
        parse_task(b'{"labels": ["a", "A"], "instructions": "x"}', "F")
    assert TASK.refusal_label == "unsafe"
