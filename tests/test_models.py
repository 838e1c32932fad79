"""Networks: streaming step equals the sequence forward, predictions are causal, training runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sleepstream.features import FEATURE_NAMES, night_features
from sleepstream.models.net import SleepGRU, SleepMLP, SleepNet, count_parameters
from sleepstream.models.training import predict_night
from sleepstream.records import Recording


def _fitted(net: SleepNet, recordings: list[Recording]) -> SleepNet:
    columns = [FEATURE_NAMES.index(n) for n in net.feature_names]
    net.normalise.fit(np.concatenate([night_features(r)[:, columns] for r in recordings[:5]]))
    return net.eval()


@pytest.mark.parametrize("net_class", [SleepGRU, SleepMLP])
def test_forward_equals_repeated_step(
    net_class: type[SleepNet], recordings: list[Recording]
) -> None:
    torch.manual_seed(0)
    net = _fitted(net_class(), recordings)
    night = recordings[3]
    columns = [FEATURE_NAMES.index(n) for n in net.feature_names]
    x = torch.as_tensor(night_features(night)[:, columns], dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        logits, final = net(x)
        state = net.initial_state(1)
        stepped = []
        for t in range(x.shape[1]):
            logit, state = net.step(x[:, t], state)
            stepped.append(logit)
    np.testing.assert_allclose(torch.stack(stepped, 1).numpy(), logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(state.numpy(), final.numpy(), atol=1e-5)


def test_gru_is_watch_sized() -> None:
    assert count_parameters(SleepGRU()) < 100_000


def test_missing_features_are_handled(recordings: list[Recording]) -> None:
    net = _fitted(SleepGRU(), recordings)
    x = torch.full((2, 7, net.n_features), float("nan"))
    with torch.no_grad():
        logits, state = net(x)
    assert torch.isfinite(logits).all() and torch.isfinite(state).all()


def test_predictions_are_causal_on_a_real_night(recordings: list[Recording]) -> None:
    """Cut a night at random epochs: the predictions before the cut do not change."""
    torch.manual_seed(0)
    net = _fitted(SleepGRU(), recordings)
    night = next(r for r in recordings if r.subject_id == "46343")
    full = predict_night(net, night)
    rng = np.random.default_rng(0)
    for k in rng.choice(np.arange(1, night.n_epochs), size=8, replace=False):
        np.testing.assert_allclose(predict_night(net, night.truncated(int(k))), full[:k], atol=1e-6)


def test_lightning_module_documents_its_parameters() -> None:
    """``fit --help`` shows the module's parameter text, which comes from its docstring."""
    from sleepstream.models.module import SleepWakeModule

    assert SleepWakeModule.__doc__ is not None
    for name in ("wake_weight", "focal_gamma", "ema_decay"):
        assert name in SleepWakeModule.__doc__
