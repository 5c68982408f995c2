"""The encoder trained on edges (nomad/edges.py ParametricEdgeTrainer, cne's parametric mode),
and the batch aggregation of both parametric trainers.

* An epoch walks every directed edge of the binary graph once, in batches of ``batch_size``;
  each batch's loss is the per-edge loss (one positive, m negatives from the batch's tails)
  at the encoder's current outputs, summed or averaged as ``aggregation`` says, and Adam's
  rate follows the linear schedule unscaled.
* The heads trainer back-propagates its batch's loss summed or averaged the same way.
* A fit embeds digits well above chance, and ``transform`` places held-out digits among them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from nomad import InfoNCTSNE, NegTSNE
from nomad.edges import ParametricEdgeTrainer
from nomad.parametric import ParametricTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return d.data.astype(np.float32), d.target


def neg_tsne_by_hand(y_h, y_t, y_n, log_nu: float) -> float:
    """sum_e -log(q_e / (q_e + nu)) + sum_{e,s} log((q_es + nu) / nu), q = 1 / (1 + d^2)."""
    nu = np.exp(log_nu)
    q = 1.0 / (1.0 + ((y_h - y_t) ** 2).sum(-1))
    q_n = 1.0 / (1.0 + ((y_h[:, None] - y_n) ** 2).sum(-1))
    return float(-np.log(q / (q + nu)).sum() + np.log((q_n + nu) / nu).sum())


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_an_epoch_walks_every_edge_once_with_the_loss_at_the_encoders_outputs(digits, monkeypatch,
                                                                             aggregation):
    X = digits[0][:300]
    seen, backpropagated = [], []
    update, adam_step = ParametricEdgeTrainer._update, ParametricEdgeTrainer._adam_step

    def recording_update(self, h, t, extra, rho, lr, record):
        state = self.gen.get_state()
        noise = self._negatives(h, t)  # the draw _update is about to make
        self.gen.set_state(state)
        with torch.no_grad():
            y = self.encoder(self.X).numpy()
        expected = neg_tsne_by_hand(y[h], y[t], y[noise], float(self.loss.log_nu()))
        value = update(self, h, t, extra, rho, lr, record)
        assert np.isin(noise.numpy(), t.numpy()).all()  # negatives from the batch's tails
        seen.append((h.numpy(), t.numpy(), len(self.graph.heads), expected, value))
        return value

    def recording_adam_step(self, loss, lr):
        backpropagated.append((float(loss.detach()), lr))
        adam_step(self, loss, lr)

    monkeypatch.setattr(ParametricEdgeTrainer, "_update", recording_update)
    monkeypatch.setattr(ParametricEdgeTrainer, "_adam_step", recording_adam_step)
    model = NegTSNE(s=0.0, parametric=True, sampling="edges", n_epochs=1, batch_size=256, hidden=(16,),
                    n_neighbors=10, p_model="uniform", graph="binary", noise="batch_neighbors",
                    aggregation=aggregation, clip_grad=4.0, knn="cells", random_state=0).fit(X)
    assert model.embedding_.shape == (300, 2) and np.isfinite(model.embedding_).all()
    walked = np.concatenate([np.stack([h, t], 1) for h, t, *_ in seen])
    n_edges = seen[0][2]
    assert len(walked) == n_edges and len(np.unique(walked, axis=0)) == n_edges  # each edge once
    assert [len(h) for h, *_ in seen] == [256] * (len(seen) - 1) + [n_edges - 256 * (len(seen) - 1)]
    steps = len(seen)
    for k, ((h, _, _, expected, value), (loss, lr)) in enumerate(zip(seen, backpropagated)):
        assert value == pytest.approx(expected, rel=1e-4)
        assert loss == pytest.approx(value / 256 if aggregation == "mean" else value, rel=1e-6)
        assert lr == pytest.approx(1e-3 * (1 - k / steps))  # Adam's rate: linear to 0, not divided by B


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_the_heads_encoder_backpropagates_the_summed_or_averaged_batch_loss(digits, monkeypatch, aggregation):
    backpropagated, per_head = [], []
    adam_step, step = ParametricTrainer._adam_step, ParametricTrainer.step
    monkeypatch.setattr(ParametricTrainer, "_adam_step",
                        lambda self, loss, lr: (backpropagated.append(float(loss.detach())),
                                                adam_step(self, loss, lr)))
    monkeypatch.setattr(ParametricTrainer, "step",
                        lambda self, *args, **kw: per_head.append(step(self, *args, **kw)) or per_head[-1])
    NegTSNE(parametric=True, n_epochs=1, batch_size=50, hidden=(16,), aggregation=aggregation, knn="cells",
            random_state=0).fit(digits[0][:300])
    assert len(backpropagated) == len(per_head) == 6
    for loss, mean in zip(backpropagated, per_head):  # step returns the batch's mean per head
        assert loss == pytest.approx(mean if aggregation == "mean" else 50 * mean, rel=1e-6)


def test_the_encoder_on_edges_embeds_digits_and_places_new_ones(digits):
    """Fit on 1,500 digits, place the other 297 by ``transform``; kNN accuracy (chance 0.1)
    measured: 0.94 on the fitted rows (cross-validated), 0.82 on the placed ones (25 epochs)."""
    X, y = digits
    model = InfoNCTSNE(parametric=True, sampling="edges", n_epochs=25, hidden=(64, 64), knn="cells",
                       random_state=0)
    Y = model.fit_transform(X[:1500])
    knn = KNeighborsClassifier(10)
    assert cross_val_score(knn, Y, y[:1500], cv=3).mean() > 0.85
    assert knn.fit(Y, y[:1500]).score(model.transform(X[1500:]), y[1500:]) > 0.7


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("parametric", [False, True])
def test_edge_sampling_trains_on_cuda(digits, parametric):
    """Both edge trainers on the torch path of a GPU (the graph, the sampler and, parametric,
    the encoder on the device; ``transform`` after it)."""
    X, y = digits
    model = NegTSNE(s=0.0, sampling="edges", parametric=parametric, n_epochs=20, knn="cells",
                    accelerator="cuda", random_state=0)
    Y = model.fit_transform(X)
    assert cross_val_score(KNeighborsClassifier(10), Y, y, cv=3).mean() > 0.85
    assert np.isfinite(model.transform(X[:50])).all()
