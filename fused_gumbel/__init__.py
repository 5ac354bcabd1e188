"""fused-gumbel: a fused, exact, never-NaN Gumbel-Softmax for PyTorch.

``fused_gumbel.gumbel_softmax`` replaces ``torch.nn.functional.gumbel_softmax`` with one Triton
kernel each way (noise, tempered softmax, one-hot and straight-through backward fused);
``fused_gumbel.categorical`` draws exact categorical samples by the Gumbel-max trick.
The RNG spec shared by kernels and reference is in ``fused_gumbel.rng``.
"""
from . import reference, rng
from .functional import categorical, gumbel_softmax, select_backend

__version__ = "0.1.0"

__all__ = ["gumbel_softmax", "categorical", "select_backend", "reference", "rng", "__version__"]
