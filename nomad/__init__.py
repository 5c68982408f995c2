"""NOMAD Projection and the contrastive neighbour-embedding family on one engine.

    from nomad import NOMAD
    Y = NOMAD(n_epochs=200).fit_transform(X)
"""

from .methods import NOMAD, InfoNCTSNE, NCVis
from .methods import NegTSNEMethod as NegTSNE
from .methods import UMAPLossMethod as UMAPLoss
from .tsimcne import TSimCNE

__all__ = ["NOMAD", "InfoNCTSNE", "NCVis", "NegTSNE", "TSimCNE", "UMAPLoss"]
