"""t-SimCNE (Böhm, Berens & Kobak, ICLR 2023) on plain torch: 2-D maps of images from pixels.

Its own package, apart from the kNN engine (:mod:`nomad`), whose InfoNCE loss and Cauchy kernel
it reuses: ``from nomad import NOMAD`` does not load the CNN code. Named ``tsimcne_lite`` so that
it does not shadow the authors' ``tsimcne`` package (no torchvision, no Lightning here), which
:mod:`baselines.tsimcne` runs as a cross-check::

    from tsimcne_lite import TSimCNE
    Y = TSimCNE(image_shape=(28, 28), n_epochs=(100, 10, 50)).fit_transform(images.reshape(n, -1))
"""

from .model import TSimCNE

__all__ = ["TSimCNE"]
