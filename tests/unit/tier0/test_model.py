"""Tier 0's features and predictions (tier0/model.py); fitting: test_train.py."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from escalator.tier0.model import Features, Tier0Error, Tier0Model
from escalator.tier0.train import fit
from tests.unit.tier0.worlds import WORLDS


def _columns(f: Features, text: str) -> set[int]:
    doc, col = f.occurrences([text])
    assert set(doc.tolist()) <= {0}
    return set(col.tolist())


def test_a_word_hashes_to_the_same_column_wherever_it_stands() -> None:
    """The same word, alone, first, last, in another text of the batch: the same columns (by
    prefix hashes), and case does not matter."""
    f = Features(char_ngrams=(3, 3), words=True, bits=20)
    alone = _columns(f, "parcel")
    assert alone <= _columns(f, "my PARCEL is late")
    assert alone <= _columns(f, "where is the parcel")
    doc, col = f.occurrences(["nothing here", "the parcel"])
    assert alone <= set(col[doc == 1].tolist())
    assert not alone <= set(col[doc == 0].tolist())


def test_no_ngram_spans_two_texts_and_a_batch_scores_as_its_texts_alone() -> None:
    """Predicting a batch gives each text what predicting it alone gives (the texts do not
    leak into each other), including empty, non-ASCII, very short texts and texts with NULs."""
    rng = np.random.default_rng(0)
    world = WORLDS[0]
    texts, labels = world.draw(600, rng)
    # A NUL inside a text (valid JSON: "\u0000") splits its n-grams there, and must not shift
    # the texts after it, in training or in a batch.
    nul = ["where is my\x00parcel", "\x00", "a\x00\x00b"]
    model = fit([*texts, *nul], [*labels, *labels[:3]], features=Features(bits=16))
    batch = ["", "é", "ab", *nul, "Ärger über die Rechnung 💳", *texts[:50]]
    together = model.probabilities(batch)
    alone = np.vstack([model.probabilities([t]) for t in batch])
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-9)
    assert np.allclose(together.sum(axis=1), 1.0)


def test_training_needs_two_labels_and_weights_must_fit_the_features() -> None:
    """One label: nothing to learn (one line). Mismatched arrays: refused at construction."""
    with pytest.raises(Tier0Error, match="at least two labels"):
        fit(["a", "b"], ["x", "x"])
    with pytest.raises(Tier0Error, match="do not fit"):
        Tier0Model(
            Features(bits=12), ("a", "b"), np.zeros((4096, 3), np.float32), np.zeros(2, np.float32)
        )


def test_predict_costs_microseconds_per_record_in_bulk() -> None:
    """A figure, not a timed assertion: microseconds per record for a batch of 5,000 texts
    of about 100 characters (docs/CALIBRATION.md quotes a run of this test with -s)."""
    rng = np.random.default_rng(2)
    texts, labels = WORLDS[1].draw(3000, rng)
    model = fit(texts, labels)
    batch, _ = WORLDS[1].draw(5000, rng)
    model.predict(batch[:100])
    started = time.perf_counter()
    out = model.predict(batch)
    took = time.perf_counter() - started
    chars = sum(map(len, batch)) / len(batch)
    print(
        f"\n  predict: {took / len(batch) * 1e6:.1f} us/record for {len(batch)} texts of "
        f"{chars:.0f} characters (2**{model.features.bits} columns, {len(model.classes)} "
        f"labels; load average {os.getloadavg()[0]:.1f})"
    )
    assert len(out) == len(batch)
