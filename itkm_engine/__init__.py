"""ITKM Studio's engine: unsupervised multi-scenario person re-identification (no Qt here)."""

import os as _os

# OpenMP threads that spin while waiting cost torch 3x here whenever anything else wants the
# CPU (the app's GUI thread, data-loader workers, a second job): measured 121 -> 367 img/s for
# the quick model's forward on 2 cores at load 2.2.  Must be set before torch loads; a value
# the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
