r"""``torch.nn`` modules: :class:`GumbelSoftmax` and :class:`GumbelSigmoid`.

``GumbelSoftmax`` draws y = softmax((logits + g) / tau), g ~ Gumbel(0, 1) i.i.d. (the
Gumbel-Softmax of Jang, Gu, Poole 2017, the Concrete distribution of Maddison, Mnih, Teh 2017),
with ``hard=True`` giving the exact one-hot of argmax(logits + g) with the soft gradient
(straight-through). ``GumbelSigmoid`` is its two-class case per element, the relaxed Bernoulli
sigmoid((logits + l) / tau) with l ~ Logistic(0, 1) (Maddison et al. 2017, section 3.3).

A learnable temperature is a positive parameter, tau = min_tau + exp(log_tau) (min_tau = 0
when no floor is set), trained through the temperature gradient of the fused kernel; a fixed
one is a float that a :class:`fused_gumbel.schedules.TemperatureSchedule` may update
(``module.tau = schedule.step()``). In ``eval()`` mode the modules return exact discrete samples
by default (``eval_mode="sample"``: the one-hot of argmax(logits + g), a categorical draw),
or the mode ``"argmax"`` (one-hot of argmax(logits), no noise), or the same relaxed sample as
in training (``"relaxed"``).
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Union

import torch
from torch import nn

from .functional import Estimator, gumbel_softmax
from .reference_estimators import check_estimator

EvalMode = Literal["sample", "argmax", "relaxed"]
_EVAL_MODES = ("sample", "argmax", "relaxed")

__all__ = ["GumbelSoftmax", "GumbelSigmoid"]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


class _Tempered(nn.Module):
    """Temperature handling shared by the two modules."""

    def __init__(self, tau: float, hard: bool, learnable_tau: bool, min_tau: Optional[float],
                 eval_mode: EvalMode) -> None:
        super().__init__()
        tau = _positive("tau", tau)
        self.min_tau = None if min_tau is None else _positive("min_tau", min_tau)
        if eval_mode not in _EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {_EVAL_MODES}, got {eval_mode!r}")
        self.hard = bool(hard)
        self.eval_mode = eval_mode
        self.learnable_tau = bool(learnable_tau)
        floor = self.min_tau or 0.0
        if self.learnable_tau:
            if tau <= floor:
                raise ValueError(f"a learnable tau must start above min_tau ({floor}), got {tau}")
            self.log_tau = nn.Parameter(torch.tensor(math.log(tau - floor)))
        else:
            self._tau = max(tau, floor)
            # The same value as a buffer: under torch.compile a tensor temperature can change
            # (schedules) without recompiling, where a Python float would be a graph constant.
            self.register_buffer("_tau_tensor", torch.tensor(self._tau), persistent=False)

    @property
    def tau(self) -> Union[float, torch.Tensor]:
        """The current temperature: a float, or (learnable) a differentiable 0-dim tensor."""
        if self.learnable_tau:
            return (self.min_tau or 0.0) + self.log_tau.exp()
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        if self.learnable_tau:
            raise AttributeError("tau is learnable; set log_tau (tau = min_tau + exp(log_tau)) instead")
        value = max(_positive("tau", value), self.min_tau or 0.0)
        self._tau = value
        self._tau_tensor.fill_(value)

    def _tau_for_call(self) -> Union[float, torch.Tensor]:
        if self.learnable_tau:
            return self.tau
        # Recording a graph: the buffer is a graph input (torch.jit.trace would freeze a float).
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self._tau_tensor
        return self._tau

    def _extra_tau_repr(self) -> str:
        tau = f"learnable, init={self.tau.item():.4g}" if self.learnable_tau else f"{self._tau:.4g}"
        floor = "" if self.min_tau is None else f", min_tau={self.min_tau}"
        return f"tau={tau}{floor}, hard={self.hard}, eval_mode={self.eval_mode!r}"


class GumbelSoftmax(_Tempered):
    r"""Gumbel-Softmax sampling layer (Jang, Gu, Poole 2017; Maddison, Mnih, Teh 2017).

    .. math:: y = \mathrm{softmax}\big((\text{logits} + g) / \tau\big),\quad g_k \sim \mathrm{Gumbel}(0, 1)

    Args:
        tau: initial (or fixed) temperature > 0.
        hard: forward the exact one-hot of argmax(logits + g), backward the soft gradient.
        dim: the class dimension.
        learnable_tau: make tau a parameter, tau = min_tau + exp(log_tau), learned through the
            temperature gradient.
        min_tau: a floor on tau (learnable: tau > min_tau always; fixed: tau = max(tau, min_tau)).
        eval_mode: what ``eval()`` mode returns: ``"sample"`` (default) an exact categorical
            one-hot sample, ``"argmax"`` the one-hot of argmax(logits) (the mode, no noise),
            ``"relaxed"`` the same sample as in training. ``"sample"`` keeps the
            straight-through gradient; ``"argmax"`` has none.
        generator, seed: passed to :func:`fused_gumbel.gumbel_softmax` (at most one of them).
        estimator, mc_samples: the gradient estimator of the hard sample ("st", "gumbel_rao",
            "reinmax") and Gumbel-Rao's number of draws, as in :func:`fused_gumbel.gumbel_softmax`
            (an estimator other than "st" needs ``hard=True``).

    ``forward(logits, tau=None)`` takes an optional per-call temperature (float or tensor)
    overriding the module's.
    """

    def __init__(self, tau: float = 1.0, hard: bool = False, dim: int = -1, learnable_tau: bool = False,
                 min_tau: Optional[float] = None, eval_mode: EvalMode = "sample",
                 generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                 estimator: Estimator = "st", mc_samples: Optional[int] = None) -> None:
        super().__init__(tau, hard, learnable_tau, min_tau, eval_mode)
        self.dim = dim
        self.generator = generator
        self.seed = seed
        check_estimator(estimator, hard, mc_samples)  # fail at construction, not at the first call
        self.estimator = estimator
        self.mc_samples = mc_samples

    def forward(self, logits: torch.Tensor, tau: Union[float, torch.Tensor, None] = None) -> torch.Tensor:
        tau = self._tau_for_call() if tau is None else tau
        if self.training or self.eval_mode == "relaxed":
            return gumbel_softmax(logits, tau, self.hard, dim=self.dim, generator=self.generator, seed=self.seed,
                                  **self._estimator_args())
        if self.eval_mode == "argmax":
            index = logits.detach().argmax(self.dim, keepdim=True)
            return torch.zeros_like(logits, requires_grad=False).scatter_(self.dim, index, 1.0)
        # The hard sample's forward value is exactly the categorical one-hot of argmax(logits + g).
        return gumbel_softmax(logits, tau, True, dim=self.dim, generator=self.generator, seed=self.seed,
                              **self._estimator_args())

    def _estimator_args(self) -> dict:
        if self.estimator == "st" and self.mc_samples is None:
            return {}  # the default call, as before estimators existed
        return dict(estimator=self.estimator, mc_samples=self.mc_samples)

    def extra_repr(self) -> str:
        estimator = "" if self.estimator == "st" else f", estimator={self.estimator!r}"
        if self.mc_samples is not None:
            estimator += f", mc_samples={self.mc_samples}"
        return f"{self._extra_tau_repr()}, dim={self.dim}{estimator}"


class GumbelSigmoid(_Tempered):
    r"""Relaxed Bernoulli (binary Concrete) sampling layer (Maddison, Mnih, Teh 2017; Jang et al. 2017).

    .. math:: y = \sigma\big((\text{logits} + l) / \tau\big),\quad l \sim \mathrm{Logistic}(0, 1)

    elementwise, where l = g_1 - g_0 is the difference of two Gumbel variables, so this is
    :class:`GumbelSoftmax` over the two classes (logits, 0). ``hard=True`` forwards the exact
    Bernoulli(sigmoid(logits)) sample 1[logits + l > 0] with the soft gradient. Arguments as
    for :class:`GumbelSoftmax` (no ``dim``).
    """

    def __init__(self, tau: float = 1.0, hard: bool = False, learnable_tau: bool = False,
                 min_tau: Optional[float] = None, eval_mode: EvalMode = "sample",
                 generator: Optional[torch.Generator] = None, seed: Optional[int] = None) -> None:
        super().__init__(tau, hard, learnable_tau, min_tau, eval_mode)
        self.generator = generator
        self.seed = seed

    def forward(self, logits: torch.Tensor, tau: Union[float, torch.Tensor, None] = None) -> torch.Tensor:
        from .relaxed import relaxed_bernoulli

        tau = self._tau_for_call() if tau is None else tau
        if self.training or self.eval_mode == "relaxed":
            return relaxed_bernoulli(logits, tau, self.hard, generator=self.generator, seed=self.seed)
        if self.eval_mode == "argmax":
            return (logits.detach() > 0).to(logits.dtype)
        return relaxed_bernoulli(logits, tau, True, generator=self.generator, seed=self.seed)

    def extra_repr(self) -> str:
        return self._extra_tau_repr()
