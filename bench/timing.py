"""Timers: ``triton.testing.do_bench`` on CUDA, an interleaved synchronised wall clock on CPU.

Both return, per provider, the median and the 20th/80th percentiles in milliseconds.
do_bench flushes the L2 cache before every call and times it with CUDA events. The CPU timer
warms every provider up, then takes rounds in which each provider runs once, in an order
rotated every round, so that drift in machine load (cores shared with other jobs) spreads
over all providers instead of favouring whichever ran in a quiet moment.
"""
from __future__ import annotations

import contextlib
import signal
import statistics
import threading
import time
from typing import Callable

import torch

QUANTILES = (0.5, 0.2, 0.8)


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) < 400 else text[:397] + "..."


class Skipped(Exception):
    """A provider deliberately not run for a case (recorded as ``{"skipped": reason}``)."""


def error_record(error: BaseException) -> dict:
    if isinstance(error, Skipped):
        return {"skipped": str(error)}
    return {"error": _error_text(error)}


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (a safety net for a hung
    compile or a pathological provider; a no-op off the main thread or without SIGALRM)."""
    usable = seconds and seconds > 0 and hasattr(signal, "SIGALRM") and \
        threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"gave up after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantile(sorted_values: list[float], q: float) -> float:
    # Linear interpolation between order statistics, as numpy's default.
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    return {"median_ms": statistics.median(ordered), "p20_ms": _quantile(ordered, 0.2),
            "p80_ms": _quantile(ordered, 0.8), "samples": len(ordered)}


class CudaTimer:
    """``triton.testing.do_bench`` per provider."""

    name = "triton.testing.do_bench (CUDA events, L2 flushed per call)"

    def __init__(self, warmup_ms: int = 25, rep_ms: int = 100, timeout_s: float = 120.0):
        self.warmup_ms, self.rep_ms, self.timeout_s = warmup_ms, rep_ms, timeout_s

    def measure(self, calls: dict[str, Callable[[], object]]) -> dict[str, dict]:
        from triton.testing import do_bench

        results = {}
        for name, call in calls.items():
            try:
                with deadline(self.timeout_s):
                    median, p20, p80 = do_bench(call, warmup=self.warmup_ms, rep=self.rep_ms,
                                                quantiles=list(QUANTILES))
                results[name] = {"median_ms": median, "p20_ms": p20, "p80_ms": p80}
            except Exception as error:  # a failing provider is recorded, never fatal
                results[name] = error_record(error)
        return results


class WallClockTimer:
    """Interleaved, synchronised ``time.perf_counter`` rounds (CPU, or CUDA without triton)."""

    name = "interleaved wall clock (perf_counter, synchronised, warmed up)"

    def __init__(self, device: torch.device, min_rounds: int = 5, max_rounds: int = 50,
                 budget_s: float = 1.0, timeout_s: float = 120.0):
        self.device = device
        self.min_rounds, self.max_rounds, self.budget_s, self.timeout_s = min_rounds, max_rounds, budget_s, timeout_s

    def _time_once(self, call) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        call()
        synchronize(self.device)
        return (time.perf_counter() - start) * 1e3

    def measure(self, calls: dict[str, Callable[[], object]]) -> dict[str, dict]:
        results: dict[str, dict] = {}
        live = {}
        for name, call in calls.items():
            try:
                with deadline(self.timeout_s):
                    self._time_once(call)  # warm-up: caches, allocator, lazy inits
                live[name] = call
            except Exception as error:
                results[name] = error_record(error)
        samples: dict[str, list[float]] = {name: [] for name in live}
        names = list(live)
        started = time.perf_counter()
        rounds = 0
        while names and rounds < self.max_rounds:
            if rounds >= self.min_rounds and time.perf_counter() - started > self.budget_s:
                break
            shift = rounds % len(names)
            for name in names[shift:] + names[:shift]:
                try:
                    samples[name].append(self._time_once(live[name]))
                except Exception as error:
                    results[name] = error_record(error)
            names = [n for n in names if n not in results]
            rounds += 1
        for name in live:
            if name not in results:
                results[name] = summarize(samples[name])
        return {name: results[name] for name in calls}


def host_best_us(functions: dict[str, Callable[[], object]], calls: int, repeats: int) -> dict[str, float]:
    """Host time per call of each function, in us: after a warm-up, the smallest of ``repeats``
    medians of ``calls`` calls, the rounds interleaving every function (a burst of load on a
    shared machine hits them alike, and noise only adds time)."""

    def median_us(fn):
        samples = []
        for _ in range(calls):
            start = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - start)
        return statistics.median(samples) / 1e3

    for fn in functions.values():
        for _ in range(max(5, calls // 10)):
            fn()
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(max(1, repeats)):
        for key, fn in functions.items():
            best[key] = min(best[key], median_us(fn))
    return best
