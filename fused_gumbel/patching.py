"""Swap ``torch.nn.functional.gumbel_softmax`` for ``fused_gumbel.gumbel_softmax`` in unmodified code.

(Named ``patching`` so that the module does not shadow the function ``fused_gumbel.patch``.)

``fused_gumbel.patch()`` replaces the attribute at once and returns a handle; ``handle.undo()``
(or leaving a ``with fused_gumbel.patch():`` block) puts back exactly what was there before,
so patches nest. ``fused_gumbel.unpatch()`` restores PyTorch's original whatever is stacked.

Only lookups made through the module after patching are affected: code that ran
``from torch.nn.functional import gumbel_softmax`` earlier holds the original function.
The patched attribute is ``fused_gumbel.gumbel_softmax`` itself, a module-level function, so
objects that hold it (``functools.partial(F.gumbel_softmax, tau=0.5)`` in a model) pickle, and
``torch.save(model)`` works; they unpickle to ``fused_gumbel.gumbel_softmax``.
The replacement accepts PyTorch's signature ``(logits, tau=1, hard=False, eps=1e-10, dim=-1)``;
see ``docs/migrating.md`` for how the results differ (exact one-hot, tensor tau, no NaN).
"""
from __future__ import annotations

import threading
from types import TracebackType
from typing import Callable, Optional

import torch.nn.functional as F

from .functional import gumbel_softmax

__all__ = ["patch", "unpatch", "is_patched", "Patch"]

_ORIGINAL: Callable = F.gumbel_softmax
_LOCK = threading.Lock()
_generation = 0  # bumped by unpatch(): older handles have nothing left to undo
_active: list["Patch"] = []  # this generation's applied patches, innermost last


class Patch:
    """One application of :func:`patch`; a context manager that undoes it on exit."""

    def __init__(self, replacement: Callable) -> None:
        # The replacement itself, not a per-patch wrapper, so that it pickles by name; the stack
        # of handles, not the function's identity, tells undo() whether this patch is on top.
        self._replacement = replacement
        with _LOCK:
            self._previous: Optional[Callable] = F.gumbel_softmax
            self._generation = _generation
            F.gumbel_softmax = self._replacement
            _active.append(self)

    @property
    def active(self) -> bool:
        return self._previous is not None

    def undo(self) -> None:
        """Restore what ``F.gumbel_softmax`` was before this patch (idempotent)."""
        with _LOCK:
            if self._previous is None:
                return
            if self._generation != _generation:  # unpatch() already restored PyTorch's
                self._previous = None
                return
            if F.gumbel_softmax is not self._replacement or _active[-1] is not self:
                raise RuntimeError("torch.nn.functional.gumbel_softmax was re-patched after this patch; "
                                   "undo the later patch first (patches nest like context managers)")
            F.gumbel_softmax = self._previous
            self._previous = None
            _active.pop()

    def __enter__(self) -> "Patch":
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.undo()


def patch() -> Patch:
    """Make ``torch.nn.functional.gumbel_softmax`` call ``fused_gumbel.gumbel_softmax`` from now on.

    Usable as a statement (``handle = fused_gumbel.patch(); ...; handle.undo()``) or as a
    context manager (``with fused_gumbel.patch(): model(x)``).
    """
    return Patch(gumbel_softmax)


def unpatch() -> None:
    """Put PyTorch's own ``gumbel_softmax`` back, discarding every active patch."""
    global _generation
    with _LOCK:
        F.gumbel_softmax = _ORIGINAL
        _generation += 1
        _active.clear()


def is_patched() -> bool:
    return F.gumbel_softmax is not _ORIGINAL
