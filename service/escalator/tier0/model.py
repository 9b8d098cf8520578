"""Tier 0's classifier: a linear model on hashed word and character n-grams, numpy only.

Why this model. Near-repeat traffic (the same complaint, the same spam, lightly edited) is
what tier 0 is for, and a linear model on n-gram counts is the standard strong baseline for it:
word 1- and 2-grams catch the phrasing, character 3- and 4-grams catch spelling variants and
edits. Hashing keeps no vocabulary, so the artefact holds no list of the words it saw (see
``artefact.py`` for what it does hold) and its size is fixed by ``bits``. The weights are
fitted with the logistic loss (``train.py``, scikit-learn, in the ``tier0`` extra); the
confidence is the softmax of the per-label scores, and need not be calibrated: tier 0's
threshold is certified on a later window (``certify.py``), whatever the scores mean.

Why our own hashing and not scikit-learn's ``HashingVectorizer``. Its analyzers run in Python
per n-gram: about 400 µs per 100-character record here with character n-grams. Here a whole
batch is one byte array and every n-gram hash is a few numpy passes over it (polynomial hashes
mod 2**64, words by prefix hashes), so prediction costs tens of microseconds per record and
the service needs numpy only (already a dependency): the ``tier0`` extra (scikit-learn, scipy)
is for training, never loaded by ``escalator run``.

The features of one text: every character n-gram (``char_ngrams``, within the text, spaces
included) of its lower-cased UTF-8 bytes, every word (a run of ASCII letters and digits or
non-ASCII bytes) and every pair of consecutive words, each hashed with its kind into one of
``2**bits`` columns; a column's value is its number of occurrences divided by the square root
of the text's number of n-grams (so long and short texts score alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from escalator.errors import EscalatorError

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
_U = npt.NDArray[np.uint64]

#: The hash: FNV-1a's 64-bit prime as the polynomial base, and a Fibonacci multiplier to mix.
_BASE = np.uint64(0x100000001B3)
_INVERSE = np.uint64(pow(0x100000001B3, -1, 2**64))
_MIX = np.uint64(0x9E3779B97F4A7C15)
_WORD, _PAIR = np.uint64(101), np.uint64(102)
#: Algorithm of the hashing, recorded in the artefact: a change must refuse old artefacts.
HASHING = "escalator-ngram-hash-v1"


class Tier0Error(EscalatorError):
    """Tier 0 cannot be trained, certified or loaded from what it was given."""


@dataclass(frozen=True, slots=True)
class Features:
    """The hashed features, exactly as the artefact records them."""

    char_ngrams: tuple[int, int] = (3, 4)
    words: bool = True
    #: 2**bits columns: 2**20 keeps collisions rare on a few hundred thousand distinct n-grams
    #: and the weights at 4 MiB per label (float32).
    bits: int = 20

    def __post_init__(self) -> None:
        lo, hi = self.char_ngrams
        if not (1 <= lo <= hi <= 8) or not (10 <= self.bits <= 24):
            raise Tier0Error(f"features: char n-grams {self.char_ngrams}, bits {self.bits}")

    @property
    def width(self) -> int:
        return 1 << self.bits

    def as_json(self) -> dict[str, Any]:
        return {
            "hashing": HASHING,
            "char_ngrams": list(self.char_ngrams),
            "words": self.words,
            "bits": self.bits,
        }

    @classmethod
    def from_json(cls, doc: object) -> Features:
        if not isinstance(doc, dict) or doc.get("hashing") != HASHING:
            raise Tier0Error(f"features: not made with {HASHING}")
        try:
            lo, hi = doc["char_ngrams"]
            return cls(
                char_ngrams=(int(lo), int(hi)), words=bool(doc["words"]), bits=int(doc["bits"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise Tier0Error(f"features: not a tier-0 feature description ({exc})") from exc

    def occurrences(self, texts: Sequence[str]) -> tuple[IntArray, IntArray]:
        """(text index, column) of every n-gram occurrence in a batch."""
        empty = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if not texts:
            return empty
        # NUL separates the texts (a NUL inside one only splits its n-grams there).
        parts = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
        raw = b"\x00".join(parts)
        b = np.frombuffer(raw, np.uint8)
        if len(b) == 0:
            return empty
        sep = b == 0
        # An n-gram stays within a run between NULs; the text it belongs to comes from the
        # lengths (the separator before a text carries that text's index), so that a NUL
        # inside a text cannot shift the texts after it.
        run = np.cumsum(sep)
        lengths = np.fromiter((len(p) + 1 for p in parts), np.int64, len(parts))
        lengths[0] -= 1
        doc = np.repeat(np.arange(len(parts)), lengths)
        code = b.astype(np.uint64) + np.uint64(1)
        shift = np.uint64(64 - self.bits)
        docs: list[IntArray] = []
        cols: list[_U] = []
        size = len(b)
        with np.errstate(over="ignore"):  # arithmetic mod 2**64 is the point
            for n in range(self.char_ngrams[0], self.char_ngrams[1] + 1):
                m = size - n + 1
                if m <= 0:
                    continue
                h = np.zeros(m, np.uint64)
                for j in range(n):
                    h = h * _BASE + code[j : j + m]
                keep = (run[:m] == run[n - 1 :]) & ~sep[:m]
                docs.append(doc[:m][keep])
                cols.append(((h[keep] ^ np.uint64(n)) * _MIX) >> shift)
            if self.words:
                word_doc, word_hash = _words(b, code, doc)
                docs.append(word_doc)
                cols.append(((word_hash ^ _WORD) * _MIX) >> shift)
                same = word_doc[:-1] == word_doc[1:]
                pair = (word_hash[:-1] * _BASE) ^ word_hash[1:]
                docs.append(word_doc[:-1][same])
                cols.append(((pair[same] ^ _PAIR) * _MIX) >> shift)
        return (
            np.asarray(np.concatenate(docs), np.int64),
            np.concatenate(cols).astype(np.int64),
        )

    def rows(self, texts: Sequence[str]) -> tuple[IntArray, IntArray, FloatArray]:
        """(text index, column, value) per occurrence: a sparse matrix in COO form whose
        duplicates add up (what training builds its matrix from, and prediction sums)."""
        doc, col = self.occurrences(texts)
        count = np.bincount(doc, minlength=len(texts))
        value = 1.0 / np.sqrt(np.maximum(count, 1))
        return doc, col, value[doc]


def _words(b: npt.NDArray[np.uint8], code: _U, doc: IntArray) -> tuple[IntArray, _U]:
    """(text index, hash) of every word, by prefix hashes: the hash of bytes [l, r) is
    (H[r] - H[l]) * BASE**-l, the same wherever the word stands."""
    is_word = ((b >= 48) & (b <= 57)) | ((b >= 97) & (b <= 122)) | (b >= 128)
    edge = np.diff(np.concatenate([[0], is_word.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    size = len(b)
    power = np.full(size, _BASE, np.uint64)
    power[0] = 1
    inverse = np.full(size, _INVERSE, np.uint64)
    inverse[0] = 1
    power = np.cumprod(power)
    inverse = np.cumprod(inverse)
    prefix = np.zeros(size + 1, np.uint64)
    prefix[1:] = np.cumsum(code * power)
    return doc[starts], (prefix[ends] - prefix[starts]) * inverse[starts]


@dataclass(frozen=True)
class Tier0Model:
    """Fitted weights: ``weights`` (columns, K) float32 and ``intercept`` (K,), ``classes``
    in the order of their columns."""

    features: Features
    classes: tuple[str, ...]
    weights: npt.NDArray[np.float32]
    intercept: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        k = len(self.classes)
        if k < 2 or self.weights.shape != (self.features.width, k) or self.intercept.shape != (k,):
            raise Tier0Error(
                f"weights of shape {self.weights.shape} and {self.intercept.shape} do not fit "
                f"{k} classes and {self.features.width} columns"
            )

    def probabilities(self, texts: Sequence[str]) -> FloatArray:
        """(n, K) class probabilities for a batch (softmax of the linear scores)."""
        n, k = len(texts), len(self.classes)
        doc, col, value = self.features.rows(texts)
        gathered = self.weights[col]  # (occurrences, K): one gather for every class
        scores = np.empty((n, k))
        for j in range(k):
            scores[:, j] = np.bincount(doc, weights=gathered[:, j] * value, minlength=n)
        scores += self.intercept
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    def scores(self, texts: Sequence[str]) -> tuple[IntArray, FloatArray]:
        """(class index, confidence) per text, as arrays (what certification uses)."""
        if not texts:
            return np.zeros(0, np.int64), np.zeros(0)
        p = self.probabilities(texts)
        best = np.asarray(p.argmax(axis=1), np.int64)
        return best, np.asarray(p[np.arange(len(best)), best], np.float64)

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """(label, confidence) per text, in order: a whole batch in one call."""
        best, conf = self.scores(texts)
        classes = self.classes
        return [(classes[i], c) for i, c in zip(best.tolist(), conf.tolist(), strict=True)]
