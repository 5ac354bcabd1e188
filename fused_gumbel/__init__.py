"""fused-gumbel: a fused, exact, never-NaN Gumbel-Softmax for PyTorch.

``fused_gumbel.gumbel_softmax`` replaces ``torch.nn.functional.gumbel_softmax`` with one Triton
kernel each way (noise, tempered softmax, one-hot and straight-through backward fused);
``fused_gumbel.categorical`` draws exact categorical samples by the Gumbel-max trick.
``relaxed_bernoulli``/``gumbel_topk`` extend the relaxation to binary variables and k-subsets;
``fused_gumbel.nn`` holds modules, ``fused_gumbel.schedules`` temperature schedules, and
``patch()`` swaps ``F.gumbel_softmax`` for ours. The RNG spec shared by kernels and reference
is in ``fused_gumbel.rng``.
"""
from . import nn, reference, reference_estimators, rng, schedules
from .functional import categorical, gumbel_softmax, select_backend, select_implementation
from .patching import patch, unpatch
from .relaxed import bernoulli, gumbel_topk, relaxed_bernoulli, sample_subset

__version__ = "0.1.0"

__all__ = ["gumbel_softmax", "categorical", "select_backend", "select_implementation", "relaxed_bernoulli",
           "bernoulli", "gumbel_topk", "sample_subset", "patch", "unpatch", "nn", "schedules", "reference", "reference_estimators", "rng",
           "__version__"]
