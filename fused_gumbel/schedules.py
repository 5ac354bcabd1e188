"""Temperature schedules for the Gumbel-Softmax relaxation.

A schedule maps the global training step ``t`` to a temperature ``tau``:

* :class:`ConstantSchedule` -- ``tau(t) = tau``.
* :class:`ExponentialDecay` -- the annealing of Jang, Gu & Poole, "Categorical
  Reparameterization with Gumbel-Softmax" (ICLR 2017, section 4.3 / appendix):
  ``tau(t) = max(min_tau, tau0 * exp(-rate * floor(t / every) * every))``, i.e. the
  temperature is only updated every ``every`` steps (the paper uses N in {500, 1000},
  r in {1e-5, 1e-4}, a floor of 0.5).
* :class:`CosineSchedule` -- half-cosine decay from ``tau0`` to ``min_tau`` over
  ``total_steps`` steps, constant afterwards:
  ``tau(t) = min_tau + (tau0 - min_tau) * (1 + cos(pi * min(t, T) / T)) / 2``.

Every schedule is callable as ``schedule(step) -> float`` (pure, stateless) and also
keeps its own step counter, advanced by :meth:`TemperatureSchedule.step`, so it can be
driven like a ``torch.optim.lr_scheduler`` and checkpointed with
``state_dict()`` / ``load_state_dict()``.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = [
    "TemperatureSchedule",
    "ConstantSchedule",
    "ExponentialDecay",
    "CosineSchedule",
]


def _require_positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


class TemperatureSchedule:
    """Base class: subclasses implement :meth:`__call__` and list their hyperparameters
    in ``_hyperparameters`` so that ``state_dict`` can save and restore them."""

    _hyperparameters: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.last_step = 0

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    @property
    def value(self) -> float:
        """The temperature at the schedule's current step."""
        return self(self.last_step)

    def step(self) -> float:
        """Advance the internal step counter by one and return the new temperature."""
        self.last_step += 1
        return self.value

    def state_dict(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self._hyperparameters}
        state["last_step"] = self.last_step
        state["kind"] = type(self).__name__
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kind = state.get("kind", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"cannot load a {kind} state into a {type(self).__name__}")
        for name in self._hyperparameters:
            if name in state:
                setattr(self, name, state[name])
        self.last_step = int(state["last_step"])

    def __repr__(self) -> str:
        params = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._hyperparameters)
        return f"{type(self).__name__}({params})"


class ConstantSchedule(TemperatureSchedule):
    """A fixed temperature."""

    _hyperparameters = ("tau",)

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = _require_positive("tau", tau)

    def __call__(self, step: int) -> float:
        return self.tau


class ExponentialDecay(TemperatureSchedule):
    """``tau = max(min_tau, tau0 * exp(-rate * t))`` with ``t`` the step rounded down to a
    multiple of ``every`` (Jang et al. 2017)."""

    _hyperparameters = ("tau0", "rate", "min_tau", "every")

    def __init__(
        self, tau0: float = 1.0, rate: float = 1e-4, min_tau: float = 0.5, every: int = 100
    ) -> None:
        super().__init__()
        self.tau0 = _require_positive("tau0", tau0)
        self.min_tau = _require_positive("min_tau", min_tau)
        if self.min_tau > self.tau0:
            raise ValueError(f"min_tau ({self.min_tau}) must not exceed tau0 ({self.tau0})")
        self.rate = float(rate)
        if not (self.rate >= 0.0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a non-negative finite number, got {rate!r}")
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = int(every)

    def __call__(self, step: int) -> float:
        held_step = (int(step) // self.every) * self.every
        return max(self.min_tau, self.tau0 * math.exp(-self.rate * held_step))


class CosineSchedule(TemperatureSchedule):
    """Half-cosine decay from ``tau0`` to ``min_tau`` over ``total_steps``, then flat."""

    _hyperparameters = ("tau0", "min_tau", "total_steps")

    def __init__(self, tau0: float = 1.0, min_tau: float = 0.5, total_steps: int = 10_000) -> None:
        super().__init__()
        self.tau0 = _require_positive("tau0", tau0)
        self.min_tau = _require_positive("min_tau", min_tau)
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.total_steps = int(total_steps)

    def __call__(self, step: int) -> float:
        progress = min(max(int(step), 0), self.total_steps) / self.total_steps
        return self.min_tau + 0.5 * (self.tau0 - self.min_tau) * (1.0 + math.cos(math.pi * progress))
