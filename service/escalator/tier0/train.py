"""Fitting tier 0's weights: logistic loss by stochastic gradient descent (scikit-learn's
``SGDClassifier``, the ``tier0`` extra) on the hashed features of ``model.py``.

Why SGD and not ``LogisticRegression`` (lbfgs): on 5,000 near-repeat texts (30,000 columns
in use, 3 labels) lbfgs took 13 s here and SGD 0.6 s to the same training accuracy; tier 0 is
retrained as often as traffic drifts, on a machine the service shares. Multiclass SGD fits one
logistic model per label; the confidence tier 0 reports is the softmax of their scores, which
need not be calibrated: the threshold is certified on a later window (``certify.py``).

Only training imports scikit-learn and scipy; the fitted model is plain arrays, so the service
predicts with numpy alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from escalator.tier0.model import Features, Tier0Error, Tier0Model

#: L2 penalty per example: weak, as near-repeats want.
DEFAULT_ALPHA = 1e-5
#: Passes over the training pairs (fixed: no stopping rule that depends on a held-out split).
EPOCHS = 20


def fit(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    features: Features | None = None,
    alpha: float = DEFAULT_ALPHA,
    epochs: int = EPOCHS,
    seed: int = 0,
) -> Tier0Model:
    """Fit on (text, final label) pairs. Needs at least two labels among them."""
    try:
        from scipy import sparse
        from sklearn.linear_model import SGDClassifier
    except ImportError as exc:
        raise Tier0Error(
            f"training tier 0 needs the tier0 extra: pip install 'escalator[tier0]' ({exc})"
        ) from exc
    features = features or Features()
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise Tier0Error(
            f"training needs answers with at least two labels; these {len(labels)} pairs "
            f"have {len(classes)}"
        )
    code = {label: i for i, label in enumerate(classes)}
    y = np.asarray([code[label] for label in labels], np.int64)
    doc, col, value = features.rows(texts)
    # Only the columns that occur are fitted; the others keep weight 0.
    used, compact = np.unique(col, return_inverse=True)
    x = sparse.csr_matrix((value, (doc, compact)), shape=(len(texts), len(used)))
    x.sum_duplicates()
    clf = SGDClassifier(loss="log_loss", alpha=alpha, max_iter=epochs, tol=None, random_state=seed)
    clf.fit(x, y)
    coef = np.asarray(clf.coef_, np.float64)
    intercept = np.asarray(clf.intercept_, np.float64)
    if len(classes) == 2:
        # The binary fit has one row z for class 1: softmax of (-z/2, z/2) is sigmoid(z).
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.asarray([-intercept[0] / 2, intercept[0] / 2])
    weights = np.zeros((features.width, len(classes)), np.float32)
    weights[used] = coef.T
    return Tier0Model(
        features=features,
        classes=classes,
        weights=weights,
        intercept=np.asarray(intercept, np.float32),
    )
