"""Synthetic traffic for tier 0 whose truth is known: near-repeats it can learn, hard texts it
cannot, label noise.

A world has ``templates`` (a sequence of words and the label the models give it). A request
is, with probability ``hard``, a fresh random string of words whose routed label is drawn at
random (nothing to learn), and otherwise a template with each word replaced at random with
probability ``edit``; its routed label is the template's, or with probability ``noise`` another
label (the models are not consistent either). A drift (``relabelled``) changes the label the
models give a fixed random share of the templates (to the next label): the same near-repeats,
answered otherwise from then on. Truth for a trained model is its agreement on a
large pool drawn from the world: certification windows are then drawn from that pool with
replacement, so the pool *is* the population and its curve is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from escalator.tier0.pairs import Pair

LABELS = ("billing", "other", "spam")
VOCAB = tuple(
    f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "pu", "ri", "so", "tu") for b in range(250)
)
MODELS = {"cheap": "claude-haiku-4-5", "strong": "claude-sonnet-4-5"}


@dataclass(frozen=True)
class World:
    name: str
    hard: float  # share of texts with nothing to learn
    noise: float  # share of near-repeats whose routed label is another one
    edit: float = 0.2  # per word, the chance a near-repeat replaces it
    templates: int = 300
    words: int = 12
    seed: int = 0
    relabelled: float = 0.0  # share of templates whose routed label has changed (a drift)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
        """``n`` requests: (texts, routed labels)."""
        base = np.random.default_rng(self.seed)  # the templates are the world's, fixed
        t_words = base.integers(0, len(VOCAB), size=(self.templates, self.words))
        t_label = base.integers(0, len(LABELS), size=self.templates)
        moved = base.random(self.templates) < self.relabelled
        t_label = np.where(moved, (t_label + 1) % len(LABELS), t_label)
        which = rng.integers(0, self.templates, size=n)
        words = t_words[which]
        swap = rng.random(words.shape) < self.edit
        words = np.where(swap, rng.integers(0, len(VOCAB), size=words.shape), words)
        label = t_label[which]
        flip = rng.random(n) < self.noise
        label = np.where(flip, (label + rng.integers(1, len(LABELS), size=n)) % len(LABELS), label)
        hard = rng.random(n) < self.hard
        words = np.where(hard[:, None], rng.integers(0, len(VOCAB), size=words.shape), words)
        label = np.where(hard, rng.integers(0, len(LABELS), size=n), label)
        texts = [" ".join(VOCAB[w] for w in row) for row in words.tolist()]
        return texts, [LABELS[i] for i in label.tolist()]

    def pairs(self, n: int, rng: np.random.Generator, start_ms: int) -> list[Pair]:
        """``n`` pairs one second apart from ``start_ms``, as a pairs file holds them."""
        texts, labels = self.draw(n, rng)
        return [
            Pair(
                f"{self.name}-{start_ms}-{i}",
                t,
                y,
                start_ms + 1000 * i,
                MODELS["cheap"],
                MODELS["strong"],
            )
            for i, (t, y) in enumerate(zip(texts, labels, strict=True))
        ]


WORLDS = (
    World("mostly-repeats", hard=0.2, noise=0.02),
    World("half-hard", hard=0.5, noise=0.03, seed=1),
    World("noisy", hard=0.3, noise=0.08, seed=2),
)
