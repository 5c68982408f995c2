"""Reproductions of the seed papers' figures and tables, one command each:

    python -m experiments.figures experiment=<figure> [key=value ...]

=================  ===================================================  ==========================
experiment         reproduces                                           module
=================  ===================================================  ==========================
damrich_fig1       tsne-to-umap-contrastive Fig. 1 (Neg-t-SNE spectrum)  ``spectrum``
umap_ring          umap-true-loss Fig. 1 (UMAP contracts a ring)         ``ring``
nomad_fig3         nomad-projection Fig. 3 (quality vs wall time)        ``nomad_fig3``
nomad_table1       nomad-projection Table 1 (NOMAD vs openTSNE)          ``nomad_table1``
parametric         tsne-to-umap-contrastive Fig. 3, parametric-umap      ``parametric``
                   sec. 2 (parametric vs non-parametric, transform)
=================  ===================================================  ==========================

``<figure>_reduced`` is the tiny version each test runs. The settings live in
``conf/experiment/<figure>.yaml`` on top of ``conf/figure.yaml``; each module's ``make(cfg)``
writes a PNG and a markdown table into ``cfg.out_dir`` (``${paths.results_dir}/figures/<figure>``).
"""
