"""The published result, reproduced: logistic regression on the paper's own features.

Walch et al. (2019) report, for logistic regression on motion, heart rate and the cosine clock,
a wake-correct of 0.596 at a sleep-correct of 0.93 (threshold chosen on the scored labels, the
*oracle* figure here) on their valid epochs, pooled over leave-one-subject-out folds. This
evaluation's earlier report measured 0.605 and an AUROC of 0.837. A change to the data loading,
the LOSO driver or the metrics that moves these figures out of the published range fails here.
"""

from __future__ import annotations

import pytest

from sleepstream.baselines import LogisticPaperNonCausal
from sleepstream.evaluation.loso import run_loso
from sleepstream.evaluation.metrics import summarize
from sleepstream.records import Recording


@pytest.mark.slow
def test_logistic_regression_on_paper_features_lands_in_the_published_range(
    recordings: list[Recording],
) -> None:
    result = run_loso(LogisticPaperNonCausal(), recordings, progress=False)["psg_start"]
    summary = summarize(result)
    pooled = summary["valid"]["pooled"]

    assert summary["n_subjects"] == summary["n_nights"] == 31
    assert pooled["wasa93_oracle_sleep_correct"] >= 0.93
    assert 0.55 <= pooled["wasa93_oracle"] <= 0.66  # published 0.596, earlier report 0.605
    assert 0.80 <= pooled["auroc"] <= 0.87
