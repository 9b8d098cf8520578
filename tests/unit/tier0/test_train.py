"""Fitting tier 0 (tier0/train.py): near-repeats learnt, a binary fit stored as two columns,
only the columns in use fitted, the same fit for the same seed, a one-line error without the
extra."""

from __future__ import annotations

import numpy as np

from escalator.tier0.model import Features
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
