"""Views of a tensor as rows of classes: ``[outer, K, inner]`` for a softmax over ``dim``.

Row ``r = o * inner + i`` is the row-major order of the tensor with ``dim`` moved last, which
the RNG spec uses; kernels address it through three strides, so most strided and expanded
tensors need no copy.

Both are pure functions of sizes, strides and ``dim``, computed on every kernel call: they are
memoised (a call pays one hash of its shape), except for symbolic sizes, which do not hash.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch


class RowShape(NamedTuple):
    outer: int
    classes: int
    inner: int

    @property
    def rows(self) -> int:
        return self.outer * self.inner

    @property
    def contiguous_strides(self) -> tuple[int, int, int]:
        """(outer, class, inner) strides of a contiguous tensor of this shape."""
        return (self.classes * self.inner, self.inner, 1)

    @classmethod
    def of(cls, shape: torch.Size, dim: int) -> "RowShape":
        try:
            return _row_shape_cached(shape, dim)
        except TypeError:  # a symbolic size (torch.compile) does not hash
            return _row_shape(shape, dim)


def _row_shape(shape, dim: int) -> RowShape:
    outer = 1
    for size in shape[:dim]:
        outer *= size
    inner = 1
    for size in shape[dim + 1:]:
        inner *= size
    return RowShape(outer, shape[dim] if len(shape) else 1, inner)


_row_shape_cached = functools.lru_cache(maxsize=1024)(_row_shape)


def _merged_stride(sizes, strides) -> int | None:
    """Stride of ``sizes`` flattened into one dim, or None when they cannot be."""
    merged, expected = 0, None
    for size, stride in zip(reversed(sizes), reversed(strides)):
        if size == 1:
            continue
        if expected is None:
            merged = stride
        elif stride != expected:
            return None
        expected = stride * size
    return merged


def row_strides(t: torch.Tensor, dim: int) -> tuple[int, int, int] | None:
    """(outer, class, inner) strides of ``t`` viewed as [outer, K, inner], or None."""
    sizes = t.shape
    if not sizes:
        return (0, 0, 0)
    strides = t.stride()
    try:
        return _row_strides_cached(sizes, strides, dim)
    except TypeError:  # a symbolic size or stride (torch.compile) does not hash
        return _row_strides(sizes, strides, dim)


def _row_strides(sizes, strides, dim: int) -> tuple[int, int, int] | None:
    outer = _merged_stride(sizes[:dim], strides[:dim])
    inner = _merged_stride(sizes[dim + 1:], strides[dim + 1:])
    if outer is None or inner is None:
        return None
    return (outer, strides[dim], inner)


_row_strides_cached = functools.lru_cache(maxsize=1024)(_row_strides)


def rows_layout(t: torch.Tensor, dim: int) -> tuple[RowShape, tuple[int, int, int] | None]:
    """``RowShape.of(t.shape, dim)`` and ``row_strides(t, dim)`` in one memoised lookup (a kernel
    launch needs both on every call)."""
    sizes = t.shape
    if not sizes:
        return RowShape(1, 1, 1), (0, 0, 0)
    strides = t.stride()
    try:
        return _rows_layout_cached(sizes, strides, dim)
    except TypeError:  # a symbolic size or stride (torch.compile) does not hash
        return _row_shape(sizes, dim), _row_strides(sizes, strides, dim)


@functools.lru_cache(maxsize=1024)
def _rows_layout_cached(sizes, strides, dim: int):
    return _row_shape(sizes, dim), _row_strides(sizes, strides, dim)


def contiguous_strides(sizes) -> tuple[int, ...]:
    """The strides torch gives a contiguous tensor of ``sizes`` (a size 0 counts as 1, as in torch)."""
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def contiguous_row_strides(sizes, dim: int) -> tuple[int, int, int]:
    """``row_strides`` of a contiguous tensor of ``sizes`` (what ``as_rows`` finds in one), no tensor needed."""
    return _row_strides(sizes, contiguous_strides(sizes), dim)


def as_rows(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``t`` (copied to contiguous only if it has no [outer, K, inner] view) and its strides."""
    strides = row_strides(t, dim)
    if strides is None:
        t = t.contiguous()
        strides = row_strides(t, dim)
    return t, strides
