"""Where one call's Philox key and stream offset come from (the spec itself is ``fused_gumbel.rng``).

Four sources, checked in this order:

1. An explicit ``seed=`` (an int in [0, 2**63)): key ``seed``, offset 0. No generator is read
   or advanced, and the noise is the same on every device and backend (the CPU reference and
   the CUDA kernel compute the same bits), which is the cross-device reproducibility contract.
2. CUDA-graph capture (``torch.cuda.graph`` or ``torch.compile(mode="reduce-overhead")``): host
   values would be frozen into the graph, so the key and offset are drawn *on the device* by
   ``torch.randint`` on the generator, a graph-safe PyTorch RNG op: on every replay the graph
   reads the generator's fresh philox seed/offset from device memory (as PyTorch's dropout
   does) and the kernel reads the resulting int64 ``[2]`` tensor (key, offset) by pointer.
3. Otherwise ``rng.draw_seed_offset``: the generator (default: the device's), advanced per call.
4. Under ``torch.distributed``, sources 2 and 3 fold the process rank into the key
   (``key ^ rank_key(rank)``, rank 0 unchanged), so ranks seeded identically still draw
   independent noise; an explicit ``seed=`` is used as given on every rank.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import rng

KEY_LIMIT = 2**63
# 2**64 / golden ratio: consecutive ranks get keys that differ in about half their bits.
RANK_KEY_MULTIPLIER = 0x9E3779B97F4A7C15

Seed = Union[int, torch.Tensor]


def rank_key(rank: int) -> int:
    """The value XOR-ed into the Philox key on process ``rank`` (0 for rank 0)."""
    return (rank * RANK_KEY_MULTIPLIER) % KEY_LIMIT


_DISTRIBUTED = torch.distributed.is_available()  # a property of the torch build


def _c10d_world():
    """torch's record of the default process group (``distributed_c10d._world``, whose ``default_pg``
    ``is_initialized()`` reads through two more property calls: a microsecond of every eager call),
    or None where this torch keeps it elsewhere (``process_rank`` then asks ``is_initialized()``)."""
    if not _DISTRIBUTED:
        return None
    world = getattr(torch.distributed.distributed_c10d, "_world", None)
    if not isinstance(getattr(type(world), "default_pg", None), property):
        return None
    return world if (world.default_pg is not None) == torch.distributed.is_initialized() else None


_WORLD = _c10d_world()


def process_rank() -> int:
    """This process's rank in the default ``torch.distributed`` group, 0 when not distributed."""
    if _WORLD is not None:
        if _WORLD.default_pg is None:
            return 0
    elif not (_DISTRIBUTED and torch.distributed.is_initialized()):
        return 0
    return torch.distributed.get_rank()


def check_seed(seed: object) -> int:
    # torch.SymInt: a seed that torch.compile traces as a dynamic integer.
    if isinstance(seed, bool) or not isinstance(seed, (int, torch.SymInt)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < KEY_LIMIT:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def is_capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def graph_safe_state(device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """An int64 [2] (key, offset) tensor on ``device`` drawn by a graph-safe RNG op.

    Inside a CUDA graph ``torch.randint`` takes its philox seed/offset from device memory that
    ``CUDAGraph.replay`` refreshes from the generator, so each replay gets new values.
    """
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the logits are on {device}; "
                         "pass a generator of the logits' device")
    state = torch.randint(0, KEY_LIMIT - 1, (2,), device=device, dtype=torch.int64, generator=generator)
    salt = rank_key(process_rank())
    if salt:
        state[:1].bitwise_xor_(salt)
    return state


def rank_salt() -> int:
    """This process's ``rank_key``: what sources 2 and 3 XOR into the key."""
    return rank_key(process_rank())


def draw(device: torch.device, generator: Optional[torch.Generator] = None,
         seed: Optional[int] = None) -> tuple[Seed, int]:
    """``(key, offset)`` for one call: ints, or (a device tensor, 0) under CUDA-graph capture."""
    if seed is not None:
        if generator is not None:
            raise ValueError("pass either seed= or generator=, not both")
        return check_seed(seed), 0
    if is_capturing(device):
        return graph_safe_state(device, generator), 0
    if device.type == "cpu" and (generator is None or (type(generator) is torch.Generator
                                                       and generator.device.type == "cpu")):
        return draw_generator(None, generator)
    return draw_generator(device, generator)


def draw_generator(device: Optional[torch.device], generator: Optional[torch.Generator] = None) -> tuple[int, int]:
    """``draw`` from a generator outside CUDA-graph capture (source 3, salted by source 4):
    ``generator`` or the default generator of ``device``, where None stands for the CPU (a
    caller that knows its tensors are on the CPU need not build their torch.device)."""
    if device is None:
        key, offset = (_cpu_draw_function or _cpu_draw())(generator)
    else:
        key, offset = rng.draw_seed_offset(device, generator)
    rank = process_rank()
    return (key ^ rank_key(rank) if rank else key), offset


_cpu_draw_function = None


def _cpu_draw():
    """``rng.draw_seed_offset`` for CPU generators: ``fused_gumbel._C.draw_key_offset`` when the
    extension is built (the same Mersenne Twister words and values as the ``torch.randint`` the
    spec names, without creating a tensor; tests/test_native.py checks both), else the spec's own."""
    global _cpu_draw_function
    if _cpu_draw_function is None:
        from . import _native

        module = _native.load()
        cpu = torch.device("cpu")
        _cpu_draw_function = (module.draw_key_offset if module is not None
                              else lambda generator: rng.draw_seed_offset(cpu, generator))
    return _cpu_draw_function
