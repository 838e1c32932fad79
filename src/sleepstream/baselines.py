"""Baseline sleep/wake predictors, each run through the same leave-one-subject-out driver.

- :class:`AlwaysSleep`: says "sleep" for every epoch (about 91 % accuracy on this data, kappa 0).
- :class:`ColeKripke`: the Cole-Kripke (1992) weighted activity rule on 1-minute sums of the
  activity counts. Its counts are not ActiGraph counts, so the rule's scale factor is refitted on
  the training nights (the one maximising Cohen's kappa of the rule ``D < 1``).
  ``causal=True`` drops the two future minutes of the original window.
- :class:`LogisticCausal`: logistic regression on simple causal features (counts and heart rate
  of the current and past epochs; :data:`sleepstream.features.SIMPLE_FEATURES`).
- :class:`LogisticPaperNonCausal`: logistic regression on the published paper's features
  (count, heart rate, clock), which look up to 5 minutes into the future. It exists only to check
  this evaluation against the paper's numbers; it cannot run live.

Sleep-stage baselines (class probabilities per epoch for one label map, run through
:mod:`sleepstream.evaluation.stages`; :func:`stage_baselines`), every classifier trained with
balanced class weights (each class weighs as much as the others in the loss, as the paper did):

- :class:`MajorityStage`: the training nights' class frequencies for every epoch, so its
  decision is always the most frequent class (NREM, or light sleep).
- :class:`LogisticCausalStages`: multinomial logistic regression on the causal features of
  :class:`LogisticCausal`.
- :class:`LogisticPaperStages`, :class:`ForestPaperStages`: logistic regression and random
  forest on the paper's non-causal features (count, heart rate, cosine clock), trained on the
  valid epochs; the training class frequencies outside them. Reproduction only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from sleepstream.features import SIMPLE_FEATURES, night_features, resolve_features, select
from sleepstream.records import (
    EPOCH_SECONDS,
    PAPER_FEATURE_NAMES,
    SLEEP_WAKE,
    LabelMap,
    Recording,
)


def epoch_counts(recording: Recording) -> NDArray[np.float64]:
    """Sum of the activity counts whose window starts in each epoch (0 where none)."""
    index = np.floor((recording.count_times - recording.epoch_times[0]) / EPOCH_SECONDS)
    inside = (index >= 0) & (index < recording.n_epochs)
    sums = np.bincount(
        index[inside].astype(np.int64),
        weights=recording.counts[inside],
        minlength=recording.n_epochs,
    )
    return sums.astype(np.float64)


class AlwaysSleep:
    """p(sleep) = 1 for every epoch."""

    name = "always_sleep"
    causal = True
    description = "Says sleep for every epoch."

    def fit(self, recordings: Sequence[Recording]) -> None:
        pass

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        return np.ones(recording.n_epochs)


class ColeKripke:
    """Cole-Kripke (1992) on 1-minute activity, scale refitted on training nights.

    ``D = P * scale * sum_k W_k A_{t+k}`` over minutes ``k = -4..+2`` (``-4..0`` when causal),
    where ``A`` sums the counts of the minute ending with epoch ``t`` (two 30 s epochs). The
    rule says sleep when ``D < 1``; the probability reported is ``1 / (1 + D)``, 0.5 at the rule's
    boundary.
    """

    P = 0.001
    WEIGHTS: ClassVar[dict[int, float]] = {
        -4: 106.0,
        -3: 54.0,
        -2: 58.0,
        -1: 76.0,
        0: 230.0,
        1: 74.0,
        2: 67.0,
    }
    SCALES = np.logspace(-3, 2, 51)

    def __init__(self, causal: bool = True):
        self.causal = causal
        self.name = "cole_kripke_causal" if causal else "cole_kripke"
        self.description = (
            "Cole-Kripke weighted activity, past 4 min and current minute"
            if causal
            else "Cole-Kripke weighted activity, original window (2 min into the future)"
        )
        self.scale = 1.0

    def activity_index(self, recording: Recording) -> NDArray[np.float64]:
        """``P * sum_k W_k A_{t+k}`` before scaling; missing minutes count as no movement."""
        per_epoch = epoch_counts(recording)
        minute = per_epoch + np.concatenate([[0.0], per_epoch[:-1]])
        total = np.zeros(recording.n_epochs)
        for offset, weight in self.WEIGHTS.items():
            if self.causal and offset > 0:
                continue
            shift = 2 * offset  # one minute is two epochs
            shifted = np.zeros(recording.n_epochs)
            if shift <= 0:
                shifted[-shift:] = minute[: recording.n_epochs + shift]
            else:
                shifted[:-shift] = minute[shift:]
            total += weight * shifted
        return self.P * total

    def fit(self, recordings: Sequence[Recording]) -> None:
        labels = np.concatenate([r.labels(SLEEP_WAKE) for r in recordings])
        index = np.concatenate([self.activity_index(r) for r in recordings])
        keep = labels >= 0
        kappas = [
            cohen_kappa_score(labels[keep], (scale * index[keep] < 1).astype(int))
            for scale in self.SCALES
        ]
        self.scale = float(self.SCALES[int(np.nanargmax(kappas))])

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        return 1.0 / (1.0 + self.scale * self.activity_index(recording))


def _logistic(class_weight: str | None = None) -> Pipeline:
    return make_pipeline(
        SimpleImputer(strategy="mean", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(max_iter=2000, class_weight=class_weight),
    )


def paper_table(recording: Recording, names: Sequence[str]) -> NDArray[np.float64]:
    """Columns ``names`` of the paper's per-epoch features (NaN outside its valid epochs)."""
    if recording.paper_features is None:
        raise ValueError(f"Subject {recording.subject_id}: no walch_features/ in the data folder")
    columns = [PAPER_FEATURE_NAMES.index(n) for n in names]
    return recording.paper_features[:, columns]


class LogisticCausal:
    """Logistic regression on simple causal features; imputation and scaling fit on training."""

    name = "logreg_causal"
    causal = True

    def __init__(self, features: Sequence[str] = SIMPLE_FEATURES):
        self.features = resolve_features(features)
        self.description = "Logistic regression on causal features: " + ", ".join(self.features)
        self.model = _logistic()

    def fit(self, recordings: Sequence[Recording]) -> None:
        X = np.concatenate([select(night_features(r), self.features) for r in recordings])
        y = np.concatenate([r.labels(SLEEP_WAKE) for r in recordings])
        self.model.fit(X[y >= 0], y[y >= 0])

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        X = select(night_features(recording), self.features)
        return np.asarray(self.model.predict_proba(X)[:, 1], dtype=np.float64)


class LogisticPaperNonCausal:
    """Logistic regression on the published features (count, heart rate, clock); non-causal.

    Trained on the paper's valid epochs. Outside them (no paper features) it returns the
    training nights' fraction of sleep, so every scored epoch still has a prediction.
    """

    name = "logreg_paper_noncausal"
    causal = False
    description = (
        "Logistic regression on the published non-causal features "
        "(count and heart-rate windows reach 5 min into the future; cosine clock)"
    )
    FEATURES = ("count", "hr", "cosine")

    def __init__(self) -> None:
        self.model = _logistic()
        self.prior = 1.0

    def _table(self, recording: Recording) -> NDArray[np.float64]:
        return paper_table(recording, self.FEATURES)

    def fit(self, recordings: Sequence[Recording]) -> None:
        X = np.concatenate([self._table(r) for r in recordings])
        y = np.concatenate([r.labels(SLEEP_WAKE) for r in recordings])
        usable = (y >= 0) & np.isfinite(X).all(axis=1)
        self.model.fit(X[usable], y[usable])
        self.prior = float(y[y >= 0].mean())

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        X = self._table(recording)
        usable = np.isfinite(X).all(axis=1)
        p = np.full(recording.n_epochs, self.prior)
        if usable.any():
            p[usable] = self.model.predict_proba(X[usable])[:, 1]
        return p


def all_baselines() -> list[AlwaysSleep | ColeKripke | LogisticCausal | LogisticPaperNonCausal]:
    """The baselines of the results table, in its order."""
    return [
        AlwaysSleep(),
        ColeKripke(causal=True),
        ColeKripke(causal=False),
        LogisticCausal(),
        LogisticPaperNonCausal(),
    ]


# --------------------------------------------------------------------------------------------
# Sleep stages
# --------------------------------------------------------------------------------------------


class _StageClassifier:
    """A scikit-learn classifier on one per-epoch table, giving class probabilities.

    Rows of the table with a missing value get the training class frequencies, unless
    ``imputes`` (the pipeline fills them itself). A class absent from training gets
    probability 0 on the rows the classifier scores.
    """

    name: str
    causal: bool
    description: str
    imputes = False

    def __init__(self, label_map: LabelMap, model: Pipeline):
        self.label_map = label_map
        self.model = model
        n = len(label_map.classes)
        self.prior = np.full(n, 1.0 / n)

    def table(self, recording: Recording) -> NDArray[np.float64]:
        raise NotImplementedError

    def _rows(self, X: NDArray[np.float64]) -> NDArray[np.bool_]:
        if self.imputes:
            return np.ones(len(X), dtype=bool)
        return np.asarray(np.isfinite(X).all(axis=1), dtype=bool)

    def fit(self, recordings: Sequence[Recording]) -> None:
        X = np.concatenate([self.table(r) for r in recordings])
        y = np.concatenate([r.labels(self.label_map) for r in recordings]).astype(np.int64)
        counts = np.bincount(y[y >= 0], minlength=len(self.label_map.classes))
        self.prior = counts / counts.sum()
        usable = (y >= 0) & self._rows(X)
        self.model.fit(X[usable], y[usable])

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        X = self.table(recording)
        out = np.tile(self.prior, (recording.n_epochs, 1))
        rows = self._rows(X)
        if rows.any():
            scored = np.zeros((int(rows.sum()), out.shape[1]))
            scored[:, self.model.classes_] = self.model.predict_proba(X[rows])
            out[rows] = scored
        return out


class MajorityStage:
    """The training nights' class frequencies for every epoch: always the most frequent class."""

    name = "majority"
    causal = True
    description = "The most frequent class of the training nights, for every epoch"

    def __init__(self, label_map: LabelMap):
        self.label_map = label_map
        n = len(label_map.classes)
        self.prior = np.full(n, 1.0 / n)

    def fit(self, recordings: Sequence[Recording]) -> None:
        y = np.concatenate([r.labels(self.label_map) for r in recordings]).astype(np.int64)
        counts = np.bincount(y[y >= 0], minlength=len(self.label_map.classes))
        self.prior = counts / counts.sum()

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        return np.tile(self.prior, (recording.n_epochs, 1))


class LogisticCausalStages(_StageClassifier):
    """Multinomial logistic regression on causal features, balanced class weights."""

    name = "logreg_causal"
    causal = True
    imputes = True

    def __init__(self, label_map: LabelMap, features: Sequence[str] = SIMPLE_FEATURES):
        super().__init__(label_map, _logistic("balanced"))
        self.features = resolve_features(features)
        self.description = (
            "Logistic regression, balanced classes, on causal features: " + ", ".join(self.features)
        )

    def table(self, recording: Recording) -> NDArray[np.float64]:
        return select(night_features(recording), self.features)

    def feature_nights(self, recordings: Sequence[Recording]) -> list[Recording]:
        """The nights its folds train on: the LOSO driver computes their features in one
        batched scan before the folds start."""
        return list(recordings)


class LogisticPaperStages(_StageClassifier):
    """Multinomial logistic regression on the paper's features, balanced; non-causal."""

    name = "logreg_paper_noncausal"
    causal = False
    description = (
        "Logistic regression, balanced classes, on the published non-causal features "
        "(count, heart rate, cosine clock)"
    )
    FEATURES = LogisticPaperNonCausal.FEATURES

    def __init__(self, label_map: LabelMap):
        super().__init__(label_map, _logistic("balanced"))

    def table(self, recording: Recording) -> NDArray[np.float64]:
        return paper_table(recording, self.FEATURES)


class ForestPaperStages(_StageClassifier):
    """Random forest on the paper's features, balanced class weights; non-causal.

    The paper's forest settings (100 trees, all features per split, leaves of at least 32
    epochs, depth 10, the smallest of the depths it searched), seeded.
    """

    name = "rf_paper_noncausal"
    causal = False
    description = (
        "Random forest (100 trees, depth 10, leaves >= 32), balanced classes, on the published "
        "non-causal features (count, heart rate, cosine clock)"
    )
    FEATURES = LogisticPaperNonCausal.FEATURES

    def __init__(self, label_map: LabelMap, seed: int = 0):
        forest = RandomForestClassifier(
            n_estimators=100,
            max_depth=10,
            min_samples_split=10,
            min_samples_leaf=32,
            max_features=1.0,
            class_weight="balanced",
            random_state=seed,
            n_jobs=1,
        )
        super().__init__(label_map, make_pipeline(forest))

    def table(self, recording: Recording) -> NDArray[np.float64]:
        return paper_table(recording, self.FEATURES)


def stage_baselines(
    label_map: LabelMap,
) -> list[MajorityStage | LogisticCausalStages | LogisticPaperStages | ForestPaperStages]:
    """The stage baselines of the report for one label map, in its order."""
    return [
        MajorityStage(label_map),
        LogisticCausalStages(label_map),
        LogisticPaperStages(label_map),
        ForestPaperStages(label_map),
    ]
