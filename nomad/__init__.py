"""NOMAD Projection and the contrastive neighbour-embedding family on one engine.

    from nomad import NOMAD
    Y = NOMAD(n_epochs=200).fit_transform(X)
"""

from .methods import NCVis, NegTSNEMethod as NegTSNE, InfoNCTSNE, NOMAD, UMAPLossMethod as UMAPLoss

__all__ = ["NOMAD", "InfoNCTSNE", "NegTSNE", "NCVis", "UMAPLoss"]
