"""Embedding quality metrics: each is defined once, in the docstring of its module.

- ``neighborhood_preservation``: NP@k (nomad-projection sec. 4), ``metrics.neighborhood``
- ``random_triplet_accuracy``: random triplet accuracy (Wang et al.; nomad-projection sec. 4),
  ``metrics.triplets``
- ``knn_accuracy``: kNN classification accuracy in the embedding, ``metrics.knn_classification``
- ``trustworthiness_continuity``: trustworthiness and continuity (Venna & Kaski),
  ``metrics.trustworthiness``
- ``distance_spearman``: Spearman correlation of pairwise distances, ``metrics.distance_correlation``
- ``evaluate``: all of them as a flat dict, ``metrics.evaluation``
- ``exact_knn``: the chunked exact k-NN search behind NP@k, ``metrics.exact_knn``
"""

from metrics.distance_correlation import distance_spearman
from metrics.evaluation import evaluate
from metrics.exact_knn import exact_knn
from metrics.knn_classification import knn_accuracy
from metrics.neighborhood import neighborhood_preservation
from metrics.triplets import random_triplet_accuracy
from metrics.trustworthiness import trustworthiness_continuity

__all__ = [
    "distance_spearman",
    "evaluate",
    "exact_knn",
    "knn_accuracy",
    "neighborhood_preservation",
    "random_triplet_accuracy",
    "trustworthiness_continuity",
]
