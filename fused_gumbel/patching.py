"""Swap ``torch.nn.functional.gumbel_softmax`` for ``fused_gumbel.gumbel_softmax`` in unmodified code.

(Named ``patching`` so that the module does not shadow the function ``fused_gumbel.patch``.)

``fused_gumbel.patch()`` replaces the attribute at once and returns a handle; ``handle.undo()``
(or leaving a ``with fused_gumbel.patch():`` block) puts back exactly what was there before,
so patches nest. ``fused_gumbel.unpatch()`` restores PyTorch's original whatever is stacked.

Only lookups made through the module after patching are affected: code that ran
``from torch.nn.functional import gumbel_softmax`` earlier holds the original function.
The replacement accepts PyTorch's signature ``(logits, tau=1, hard=False, eps=1e-10, dim=-1)``;
see ``docs/migrating.md`` for how the results differ (exact one-hot, tensor tau, no NaN).
"""
from __future__ import annotations

import functools
import threading
from types import TracebackType
from typing import Callable, Optional

import torch.nn.functional as F

from .functional import gumbel_softmax

__all__ = ["patch", "unpatch", "is_patched", "Patch"]

_ORIGINAL: Callable = F.gumbel_softmax
_LOCK = threading.Lock()
_generation = 0  # bumped by unpatch(): older handles have nothing left to undo


class Patch:
    """One application of :func:`patch`; a context manager that undoes it on exit."""

    def __init__(self, replacement: Callable) -> None:
        # A distinct function object per patch, so undo() can tell whether it is still on top.
        self._replacement = functools.wraps(replacement)(lambda *args, **kwargs: replacement(*args, **kwargs))
        with _LOCK:
            self._previous: Optional[Callable] = F.gumbel_softmax
            self._generation = _generation
            F.gumbel_softmax = self._replacement

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
            if F.gumbel_softmax is not self._replacement:
                raise RuntimeError("torch.nn.functional.gumbel_softmax was re-patched after this patch; "
                                   "undo the later patch first (patches nest like context managers)")
            F.gumbel_softmax = self._previous
            self._previous = None

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


def is_patched() -> bool:
    return F.gumbel_softmax is not _ORIGINAL
