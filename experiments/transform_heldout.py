"""Held-out quality of ``transform`` beside a refit (README, "The library").

Fashion-MNIST (or MNIST): ``n_train`` training images and ``n_new`` held-out ones (from the
test split), PCA to 50 dimensions fitted on the training images. Two ways (and a baseline) to embed the
held-out points:

* transform: NOMAD fitted on the training images, the held-out ones placed by
  ``model.transform`` (kNN in the training data, the map fixed);
* refit: NOMAD fitted on training and held-out images together;
* start (for scale): the held-out points at the median of their neighbours, not optimised.

For each: 10-NN classifier accuracy of the held-out points (trained on the training points'
embedding and labels) and NP@10 of the held-out points (``metrics.neighborhood_preservation``
over them: their 10 nearest neighbours among all points, in PCA space and in the embedding), plus
the wall time of fit and transform. NOMAD runs at its defaults (``--n-epochs`` changes its epochs).

    python -m experiments.transform_heldout --dataset fashion_mnist   # or mnist
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

from metrics import neighborhood_preservation
from nomad import NOMAD


def np_at_10(X: np.ndarray, Y: np.ndarray, rows: np.ndarray) -> float:
    """NP@10 of the points ``rows``, their neighbours searched among all points."""
    return neighborhood_preservation(X, Y, ks=(10,), rows=rows)[10][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--n-new", type=int, default=2000)
    ap.add_argument("--n-epochs", type=int, default=None, help="default: NOMAD's")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = Path(os.environ.get("NEBENCH_DATA_DIR", "data")) / f"{args.dataset}.npz"
    with np.load(path) as z:
        X, y, n_train = z["X"], z["y"], int(z["n_train"])
    rng = np.random.default_rng(args.seed)
    tr = np.sort(rng.choice(n_train, args.n_train, replace=False))
    te = np.sort(n_train + rng.choice(len(X) - n_train, args.n_new, replace=False))
    pca = PCA(50, random_state=args.seed).fit(X[tr].astype(np.float32))
    Xtr, Xte = pca.transform(X[tr]).astype(np.float32), pca.transform(X[te]).astype(np.float32)
    Xall, new = np.vstack([Xtr, Xte]), np.arange(len(tr), len(tr) + len(te))
    epochs = {} if args.n_epochs is None else {"n_epochs": args.n_epochs}
    out = {"dataset": args.dataset, "n_train": len(tr), "n_new": len(te), **epochs}

    t0 = time.perf_counter()
    model = NOMAD(random_state=args.seed, **epochs).fit(Xtr)
    t1 = time.perf_counter()
    Y_new = model.transform(Xte)
    t2 = time.perf_counter()
    Y = np.vstack([model.embedding_, Y_new])
    knn = KNeighborsClassifier(10).fit(model.embedding_, y[tr])
    out["transform"] = {"knn_acc": knn.score(Y_new, y[te]), "np10": np_at_10(Xall, Y, new),
                        "fit_s": t1 - t0, "transform_s": t2 - t1}
    Y_start = model.transform(Xte, n_epochs=0)  # the median of the neighbours, not optimised
    out["start"] = {"knn_acc": knn.score(Y_start, y[te]),
                    "np10": np_at_10(Xall, np.vstack([model.embedding_, Y_start]), new)}

    t0 = time.perf_counter()
    Y_re = NOMAD(random_state=args.seed, **epochs).fit_transform(Xall)
    t1 = time.perf_counter()
    knn = KNeighborsClassifier(10).fit(Y_re[: len(tr)], y[tr])
    out["refit"] = {"knn_acc": knn.score(Y_re[new], y[te]), "np10": np_at_10(Xall, Y_re, new),
                    "fit_s": t1 - t0}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
