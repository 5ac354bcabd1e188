"""One-off probes of a call: device launches (torch.profiler) and peak memory.

Launches: on CUDA, the device activities (kernels, memcpy, memset) the profiler records per
call; on CPU, where nothing is launched, the top-level ATen operators dispatched per call.
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the call, minus what was
allocated before it (the inputs); on CPU the running sum of the profiler's allocation and
free events. Both count the call's outputs, which are still alive when it returns.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from .timing import host_best_us, synchronize


@contextlib.contextmanager
def _quiet_native_stderr():
    """Kineto prints start/stop lines on the C-level stderr; keep the report readable."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


LAUNCH_UNITS = {"cuda": "CUDA kernels/copies per call", "cpu": "top-level ATen ops per call (CPU launches none)"}


_LAUNCH_ACTIVITIES = {"kernel", "gpu_memcpy", "gpu_memset"}


def _is_device_launch(event) -> bool:
    """A kernel, memcpy or memset on the device timeline; not the device-side mirror of a
    ``record_function`` range, nor a synchronisation record."""
    if event.device_type != DeviceType.CUDA:
        return False
    activity = getattr(event, "activity_type", None)  # absent from older torch
    if activity is not None:
        return activity in _LAUNCH_ACTIVITIES
    if getattr(event, "is_user_annotation", False) or event.name.startswith("bench::"):
        return False
    return "Sync" not in event.name and "Wait" not in event.name


def count_launches(calls: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3,
                   gap_s: float = 0.002) -> dict[str, float]:
    """Mean device launches (CUDA) or top-level ATen and fused_gumbel ops (CPU) per call, for every provider of a
    case in one profiler session (a session costs far more than the calls it watches).

    Each provider runs ``repeats`` times inside its own ``record_function`` range, synchronised
    and followed by a pause. A device event belongs to the provider whose range (widened to the
    middle of the pauses on either side, which absorbs host/device clock skew) holds its start.
    """
    for call in calls.values():
        call()
    synchronize(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with _quiet_native_stderr():
        with profile(activities=activities) as prof:
            for name, call in calls.items():
                time.sleep(gap_s)
                with record_function(f"bench::{name}"):
                    for _ in range(repeats):
                        call()
                    synchronize(device)
            time.sleep(gap_s)
    events = prof.events()
    # The host-side ranges (on CUDA each also has a device-side mirror, a user annotation).
    ranges = {e.name[len("bench::"):]: e for e in events
              if e.name.startswith("bench::") and e.device_type == DeviceType.CPU}
    counts = {name: 0 for name in calls}
    if cuda:
        ordered = sorted(ranges.items(), key=lambda item: item[1].time_range.start)
        half_gap_us = gap_s * 1e6 / 2
        for event in events:
            if not _is_device_launch(event):
                continue
            owner = None
            for name, window in ordered:
                if event.time_range.start >= window.time_range.start - half_gap_us:
                    owner = name
            if owner is not None:
                counts[owner] += 1
    else:
        for event in events:
            parent = event.cpu_parent
            # Our own ops count as launches too: the eager fast path calls no ATen op at top level.
            if parent is not None and parent.name.startswith("bench::") and event.name.startswith(("aten::", "fused_gumbel::")):
                counts[parent.name[len("bench::"):]] += 1
    return {name: count / repeats for name, count in counts.items()}


def peak_memory(call: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during one call beyond what was allocated before it."""
    call()  # warm: lazily allocated workspaces and caches are not the call's own
    synchronize(device)
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = call()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return peak
    with _quiet_native_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = call()
    del out
    memory_events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(memory_events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


# ---------------------------------------------------------------------- the C++ extension (issue 11)

def native_extension(device: torch.device) -> dict:
    """Whether ``fused_gumbel._C`` runs for ``device``, why not, and which CPU build it picked."""
    from fused_gumbel import _native

    kind = device.type
    return {"available": _native.available(kind), "reason": _native.unavailable_reason(kind),
            "cpu_isa": _native.cpu_isa()}


def cuda_implementation(device: torch.device) -> dict | None:
    """How CUDA calls choose between the Triton kernels and the CUDA C++ twin in this run: the
    FUSED_GUMBEL_CUDA_IMPL override, whether the twin is built, and the provenance of
    ``fused_gumbel._twin_dispatch``'s table (which classes auto runs on the twin: measured only)."""
    if device.type != "cuda":
        return None
    import os

    from fused_gumbel import _native, _twin_dispatch
    from fused_gumbel.functional import CUDA_IMPL_ENV

    return {"env": os.environ.get(CUDA_IMPL_ENV, "auto"), "twin_available": _native.available("cuda"),
            "twin_unavailable_reason": _native.unavailable_reason("cuda"), **_twin_dispatch.summary()}


def native_host_us(calls: int = 300, repeats: int = 5) -> dict:
    """Host time per eager call through the C++ extension on CPU, in us: the same call on a 1x2
    tensor, whose kernel work is a few nanoseconds, so what is timed is the Python, extension and
    dispatcher path (``kernels/csrc/eager.cpp``'s fast path and its C++ autograd Function, when
    they apply). For each quantity the smallest of ``repeats`` medians of ``calls`` calls (rounds
    interleave the quantities). ``autograd_floor``: forward+backward of a trivial Python autograd
    Function with the same inputs (``bench.static``'s); ``fwd+bwd_beyond_floor`` = fwd+bwd -
    autograd_floor (what the goal bounds; negative when the call costs less than that Function
    alone); ``bwd_beyond_floor`` = fwd+bwd - autograd_floor - fwd. ``eager_F``: the same
    quantities for ``torch.nn.functional.gumbel_softmax``, this machine's yardstick."""
    import torch.nn.functional as F

    import fused_gumbel

    from .static import _autograd_floor_function

    floor_function = _autograd_floor_function()
    x = torch.randn(1, 2)
    xg = x.clone().requires_grad_(True)
    grad = torch.ones(1, 2)
    functions = {"floor": lambda: torch.autograd.grad(floor_function.apply(xg, 1.0, False, -1, 0, 0), xg, grad)}
    samplers = {"soft": lambda t: fused_gumbel.gumbel_softmax(t, backend="native"),
                "hard": lambda t: fused_gumbel.gumbel_softmax(t, hard=True, backend="native"),
                "eager_F": F.gumbel_softmax}
    for name, sample in samplers.items():
        functions[f"{name}/fwd"] = lambda sample=sample: sample(x)
        functions[f"{name}/both"] = lambda sample=sample: torch.autograd.grad(sample(xg), xg, grad)
    functions["index/fwd"] = lambda: fused_gumbel.categorical(x, backend="native")

    best = host_best_us(functions, calls, repeats)
    out = {}
    for name in samplers:
        fwd, both, floor = best[f"{name}/fwd"], best[f"{name}/both"], best["floor"]
        out[name] = {"fwd": round(fwd, 2), "fwd+bwd": round(both, 2), "autograd_floor": round(floor, 2),
                     "fwd+bwd_beyond_floor": round(both - floor, 2), "bwd_beyond_floor": round(both - floor - fwd, 2)}
    out["index"] = {"fwd": round(best["index/fwd"], 2), "fwd+bwd": None, "autograd_floor": None,
                    "fwd+bwd_beyond_floor": None, "bwd_beyond_floor": None}
    return out
