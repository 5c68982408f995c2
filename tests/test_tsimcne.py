"""t-SimCNE (tsimcne_lite/model.py, tsimcne_lite/augment.py) and its cross-check adapter (baselines/tsimcne.py).

* Augmentations: shape and range kept, seeded, and they do change the images.
* The loss is t-simcne eq. 4-5, checked against a direct loop on a tiny batch.
* Bad input fails early with the fix in the message (PCA'd data, no image shape).
* The runner hands the dataset's image shape to the method and accepts holdout=true.
* The issue's check on 2,000 MNIST images: a short run beats a random embedding's kNN accuracy
  by a wide margin, the 2-D fine-tuning stage ends below the readout stage's loss, and
  ``transform`` embeds unseen images deterministically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from sklearn.neighbors import KNeighborsClassifier

from nebench.errors import InputError
from nebench.runner import prepare
from tsimcne_lite.augment import Augmentation, color_jitter, random_resized_crop
from tsimcne_lite.model import TSimCNE, learning_rate_at, tsimcne_loss

pytestmark = pytest.mark.usefixtures("one_thread")

CONF = Path(__file__).resolve().parents[1] / "conf"
DATA_DIR = Path(os.environ.get("NEBENCH_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))
TINY = {"n_epochs": [1, 1, 1], "batch_size": 16}


def task_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


def images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random uint8-range images, flattened (channels last)."""
    return np.random.default_rng(seed).integers(0, 256, (n, int(np.prod(shape)))).astype(np.float32)


# -- augmentations ------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_augmentations_keep_shape_are_seeded_and_change_images(channels) -> None:
    x = torch.rand(6, channels, 28, 28)
    aug = Augmentation(flip=True)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert (a - x).abs().flatten(1).mean(1).min() > 1e-3  # every image changed


def test_full_crop_is_the_identity_and_flip_mirrors() -> None:
    x = torch.rand(8, 1, 12, 10)
    g = torch.Generator().manual_seed(0)
    whole = {"scale": (1.0, 1.0), "ratio": (10 / 12, 10 / 12)}  # the image's own aspect (W / H)
    same = random_resized_crop(x, g, **whole, flip=False)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = random_resized_crop(x, g, **whole, flip=True)
    mirrored = [torch.allclose(f, m.flip(-1), atol=1e-5) for f, m in zip(flipped, x)]
    kept = [torch.allclose(f, m, atol=1e-5) for f, m in zip(flipped, x)]
    assert all(a or b for a, b in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_colour_jitter_without_strength_is_the_identity() -> None:
    x = torch.rand(4, 3, 8, 8)
    y = color_jitter(x, torch.Generator().manual_seed(0), p=1.0, brightness=0, contrast=0,
                     saturation=0, hue=0)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


# -- loss and schedule --------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 128])
def test_loss_is_eq_4_averaged_over_the_views(dim) -> None:
    z = torch.randn(8, dim, dtype=torch.float64)  # b = 4 images, rows i and i + 4 are partners
    n2, b = len(z), len(z) // 2
    q = 1.0 / (1.0 + torch.cdist(z, z) ** 2)
    direct = [
        -torch.log(q[i, (i + b) % n2] / sum(q[i, k] for k in range(n2) if k != i))
        for i in range(n2)
    ]
    torch.testing.assert_close(tsimcne_loss(z), torch.stack(direct).mean())


def test_learning_rate_warms_up_then_anneals() -> None:
    base = 0.12
    assert learning_rate_at(0, 0.5, 100, base, 10, True) == pytest.approx(base * 0.05)
    assert learning_rate_at(9.5, 10, 100, base, 10, True) == pytest.approx(base)
    assert learning_rate_at(10, 10.5, 100, base, 10, True) == pytest.approx(base)
    assert learning_rate_at(99.5, 100, 100, base, 10, True) < 1e-3 * base
    assert learning_rate_at(40, 41, 50, base, 0, False) == base  # stage 2: constant


def test_defaults_follow_the_paper() -> None:
    X = images(40, (8, 8))
    method = TSimCNE(image_shape=(8, 8), n_epochs=[1000, 50, 450], batch_size=1024)
    method._check_params()
    assert method.stage_lr_factors == (1.0, 1.0, 1e-3) and method.momentum == 0.9
    cfg = OmegaConf.load(CONF / "method" / "tsimcne.yaml")
    assert list(cfg.n_epochs) == [1000, 50, 450] and cfg.learning_rate == "auto"
    tiny = TSimCNE(image_shape=(8, 8), n_epochs=[1, 0, 1], batch_size=40)
    tiny.fit_transform(X)
    assert tiny.learning_rates_[0] == pytest.approx(0.03 * 40 / 256)  # sec. 3.3
    assert tiny.learning_rates_[2] == pytest.approx(tiny.learning_rates_[0] / 1000)
    assert tiny.warmup_epochs_ == [0, 0, 0] and tiny.flip_ is False  # grayscale: no flips


# -- input checks -------------------------------------------------------------------------------
def test_pca_input_and_missing_shape_fail_with_the_fix() -> None:
    with pytest.raises(InputError, match="dataset.pca=null"):
        TSimCNE(image_shape=(28, 28), **TINY).fit_transform(images(20, (50,)))
    with pytest.raises(InputError, match="raw images"):
        TSimCNE(**TINY).fit_transform(images(20, (8, 8)))
    with pytest.raises(InputError, match=r"\[0, 1\] or \[0, 255\]"):
        TSimCNE(image_shape=(8, 8), **TINY).fit_transform(images(20, (8, 8)) - 128)
    with pytest.raises(InputError, match="n_epochs"):
        TSimCNE(image_shape=(8, 8), n_epochs=[5, 5]).fit_transform(images(20, (8, 8)))
    with pytest.raises(InputError, match="fit_transform first"):
        TSimCNE(image_shape=(8, 8)).transform(images(2, (8, 8)))


@pytest.mark.parametrize("shape", [(4, 6, 3), (4, 6)])
def test_rows_are_read_channels_last(shape) -> None:
    """A row is an (H, W, C) image flattened: the network sees (C, H, W), scaled to [0, 1]."""
    A = np.random.default_rng(0).integers(0, 256, (5, *shape))
    x, scale = TSimCNE(image_shape=shape)._images(A.reshape(5, -1).astype(np.float32))
    expected = (A if len(shape) == 3 else A[..., None]).transpose(0, 3, 1, 2) / 255.0
    assert scale == 255.0
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_colour_images_channels_last(backbone) -> None:
    X = images(16, (8, 8, 3))
    method = TSimCNE(image_shape=(8, 8, 3), backbone=backbone, n_epochs=[1, 0, 1], batch_size=16)
    Y = method.fit_transform(X)
    assert Y.shape == (16, 2) and Y.dtype == np.float32 and np.isfinite(Y).all()
    assert method.flip_ is True and set(method.timings_) == {"pretrain", "readout", "finetune", "embed"}


def test_seed_fixes_the_run() -> None:
    X = images(32, (8, 8))
    runs = [TSimCNE(image_shape=(8, 8), random_state=s, **TINY).fit_transform(X) for s in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


# -- the runner ---------------------------------------------------------------------------------
def test_runner_passes_the_dataset_image_shape() -> None:
    plan = prepare(task_config(["method=tsimcne", "dataset=mnist", "dataset.pca=null",
                                "trainer.accelerator=cpu", "holdout=true"]))
    assert plan.method.image_shape == [28, 28]
    pinned = prepare(task_config(["method=tsimcne", "dataset=mnist", "trainer.accelerator=cpu",
                                  "method.image_shape=[14,56]"]))
    assert pinned.method.image_shape == [14, 56]
    # mnist's default pca: 50 reaches the method as 50 columns: the fit says what to change
    with pytest.raises(InputError, match="dataset.pca=null"):
        plan.method.fit_transform(images(20, (50,)))


def test_holdout_needs_a_method_that_embeds_new_points() -> None:
    with pytest.raises(InputError, match="does not offer: use an engine method .* or tsimcne"):
        prepare(task_config(["method=pca", "holdout=true", "trainer.accelerator=cpu"]))


def test_reference_adapter_without_the_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the CPU run it asks for
    try:
        import tsimcne  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tsimcne is installed")
    plan = prepare(task_config(["method=tsimcne_ref", "dataset=mnist", "trainer.accelerator=cpu"]))
    assert plan.method.image_shape == [28, 28]
    with pytest.raises(InputError, match="pip install tsimcne"):
        plan.method.fit_transform(images(8, (28, 28)))


@pytest.mark.parametrize("accelerator, gpu, fix", [("cpu", True, "CUDA_VISIBLE_DEVICES="),
                                                   ("cuda", False, "trainer.accelerator=cpu")])
def test_reference_adapter_refuses_a_device_lightning_would_not_use(monkeypatch, accelerator, gpu, fix) -> None:
    from baselines.tsimcne import TSimCNERef

    monkeypatch.setattr("torch.cuda.is_available", lambda: gpu)
    method = TSimCNERef(image_shape=(8, 8, 3), accelerator=accelerator)
    with pytest.raises(InputError, match=f"accelerator='{accelerator}'.*{fix}"):
        method.fit_transform(images(8, (8, 8, 3)))


@pytest.mark.parametrize("shape", [(8, 8, 3), (8, 8)])
def test_reference_adapter_hands_the_package_the_images_it_was_given(shape) -> None:
    """The adapter's dataset (torch and PIL only): each row back as an RGB image, grayscale
    repeated over three channels, [0, 1] rows rescaled to 0-255."""
    from baselines.tsimcne import TSimCNERef

    A = np.random.default_rng(0).integers(0, 256, (4, *shape)).astype(np.uint8)
    rgb = A if len(shape) == 3 else np.repeat(A[..., None], 3, axis=-1)
    for X in (A.reshape(4, -1).astype(np.float32), A.reshape(4, -1) / 255.0):
        data = TSimCNERef(image_shape=shape)._dataset(X)
        assert len(data) == 4
        for i in range(4):
            image, _ = data[i]
            np.testing.assert_array_equal(np.asarray(image), rgb[i])


def test_reference_adapter_runs_the_package() -> None:
    pytest.importorskip("tsimcne")
    from baselines.tsimcne import TSimCNERef

    X = images(64, (8, 8, 3))
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"  # where Lightning's "auto" trains
    method = TSimCNERef(image_shape=(8, 8, 3), total_epochs=[1, 1, 1], batch_size=32,
                        accelerator=accelerator)
    Y = method.fit_transform(X)
    assert Y.shape == (64, 2) and np.isfinite(Y).all()
    assert method.transform(X[:5]).shape == (5, 2)


# -- the check on MNIST -----------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_fit():
    path = DATA_DIR / "mnist.npz"
    if not path.exists():
        pytest.skip(f"{path} is not there (set NEBENCH_DATA_DIR)")
    with np.load(path) as archive:
        X_all, y_all = archive["X"], archive["y"]
    rows = np.random.default_rng(0).choice(60000, 2200, replace=False)
    X, y = X_all[rows].astype(np.float32), y_all[rows]
    # a short run (under a minute on one core): small batches for more steps, milder crops and
    # a stage-3 rate 1/100 of the base instead of 1/1000, so that 3 epochs move it at all
    method = TSimCNE(image_shape=(28, 28), n_epochs=[5, 3, 3], batch_size=128, learning_rate=0.3,
                     stage_lr_factors=[1.0, 1.0, 0.01], crop_scale=[0.5, 1.0], random_state=0)
    Y = method.fit_transform(X[:2000])
    return method, X, y, Y


def knn_accuracy(Y: np.ndarray, y: np.ndarray) -> float:
    return KNeighborsClassifier(10).fit(Y[:1500], y[:1500]).score(Y[1500:], y[1500:])


@pytest.mark.slow
def test_short_mnist_run_beats_a_random_embedding(mnist_fit) -> None:
    method, _, y, Y = mnist_fit
    assert Y.shape == (2000, 2) and Y.dtype == np.float32 and np.isfinite(Y).all()
    random = knn_accuracy(np.random.default_rng(0).normal(size=Y.shape), y[:2000])
    assert knn_accuracy(Y, y[:2000]) > random + 0.2
    _pretrain, readout, finetune = method.stage_losses_
    assert finetune < readout  # the 2-D fine-tuning improves on the readout stage


@pytest.mark.slow
def test_transform_embeds_unseen_images(mnist_fit) -> None:
    method, X, _, Y = mnist_fit
    new = method.transform(X[2000:])
    assert new.shape == (200, 2) and new.dtype == np.float32 and np.isfinite(new).all()
    np.testing.assert_array_equal(new, method.transform(X[2000:]))
    np.testing.assert_array_equal(method.transform(X[:50]), Y[:50])  # fit_transform = transform
