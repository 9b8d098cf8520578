"""Fitting tier 0 (tier0/train.py): near-repeats learnt, a binary fit stored as two columns,
only the columns in use fitted, the same fit for the same seed, a one-line error without the
extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from escalator.tier0.model import Features, Tier0Error
from escalator.tier0.train import fit
from tests.unit.tier0.worlds import WORLDS


def test_it_learns_near_repeats_and_is_unsure_on_texts_it_cannot_know() -> None:
    """On unseen near-repeats of a world with no hard texts and no noise, predictions match
    the routed label almost always; random strings get lower confidence."""
    rng = np.random.default_rng(1)
    world = WORLDS[0].__class__("clean", hard=0.0, noise=0.0)
    texts, labels = world.draw(3000, rng)
    model = fit(texts, labels, features=Features(bits=18))
    test_texts, test_labels = world.draw(2000, rng)
    predicted = model.predict(test_texts)
    accuracy = np.mean([p == y for (p, _), y in zip(predicted, test_labels, strict=True)])
    assert accuracy > 0.97
    hard = WORLDS[0].__class__("hard", hard=1.0, noise=0.0)
    hard_texts, _ = hard.draw(2000, rng)
    _, conf_hard = model.scores(hard_texts)
    _, conf_easy = model.scores(test_texts)
    assert np.median(conf_hard) < np.median(conf_easy)


def test_two_labels_make_a_two_column_model_whose_confidence_is_the_sigmoid() -> None:
    """A binary fit is stored as two columns like any other; confidences are >= 0.5."""
    model = fit(
        ["buy now cheap", "hello friend", "cheap pills now", "see you friend"] * 5,
        ["spam", "ok", "spam", "ok"] * 5,
        features=Features(bits=12),
    )
    assert model.classes == ("ok", "spam") and model.weights.shape == (4096, 2)
    [(label, conf)] = model.predict(["cheap pills"])
    assert label == "spam" and 0.5 <= conf <= 1.0


def test_only_the_columns_in_use_are_fitted_and_the_classes_are_sorted() -> None:
    """Columns no training text hashes to keep weight 0 (float32); the classes are the labels
    sorted, whatever their order in the pairs; the intercept has one entry per class."""
    f = Features(bits=12)
    texts = ["red apple", "green pear", "red cherry", "green lime"] * 5
    model = fit(texts, ["zed", "alpha", "zed", "alpha"] * 5, features=f)
    assert model.classes == ("alpha", "zed") and model.intercept.shape == (2,)
    assert model.weights.dtype == np.float32
    _, used = f.occurrences(texts)
    unused = np.setdiff1d(np.arange(f.width), used)
    assert len(unused) > 0 and not model.weights[unused].any()
    assert model.weights[np.unique(used)].any(axis=1).all()
    [(label, _)] = model.predict(["red apple"])
    assert label == "zed"


def test_the_same_pairs_and_seed_fit_the_same_model() -> None:
    """Fitting is reproducible: the same pairs and seed give the same weights, another seed
    other ones (no stopping rule that depends on timing or a held-out split)."""
    rng = np.random.default_rng(3)
    texts, labels = WORLDS[1].draw(400, rng)
    one = fit(texts, labels, features=Features(bits=12), seed=7)
    two = fit(texts, labels, features=Features(bits=12), seed=7)
    other = fit(texts, labels, features=Features(bits=12), seed=8)
    np.testing.assert_array_equal(one.weights, two.weights)
    np.testing.assert_array_equal(one.intercept, two.intercept)
    assert not np.array_equal(one.weights, other.weights)


def test_without_the_tier0_extra_training_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """scikit-learn missing: a Tier0Error naming the extra to install, not an ImportError."""
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    with pytest.raises(Tier0Error, match=r"pip install 'escalator\[tier0\]'"):
        fit(["a", "b"], ["x", "y"])
