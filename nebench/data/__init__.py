"""Building blocks of :mod:`nebench.datasets`: the Dataset record, input checks, file readers,
synthetic generators and preprocessing. Import the public API from ``nebench.datasets``."""
