"""Distributed data parallel: two gloo ranks on CPU seeded identically draw independent noise
(the rank is folded into the Philox key), reproducibly; ``seed=`` is the same on every rank."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fused_gumbel
from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    import fused_gumbel
    from fused_gumbel.nn import GumbelSoftmax

    rank, world, init_file, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    from fused_gumbel import _seeding
    assert _seeding._WORLD is not None and _seeding.process_rank() == 0  # the direct read of c10d's record
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    assert _seeding.process_rank() == rank == dist.get_rank()
    logits = torch.linspace(-2, 2, 64 * 8).reshape(64, 8)
    result = {}
    for backend in sys.argv[5:]:
        torch.manual_seed(0)  # the same seed setup on every rank
        first = fused_gumbel.gumbel_softmax(logits, 0.5, backend=backend)
        index = fused_gumbel.categorical(logits, backend=backend)
        torch.manual_seed(0)
        again = fused_gumbel.gumbel_softmax(logits, 0.5, backend=backend)
        model = torch.nn.parallel.DistributedDataParallel(
            torch.nn.Sequential(torch.nn.Linear(8, 8), GumbelSoftmax(tau=0.5, hard=True)))
        torch.manual_seed(0)
        ddp_out = model(logits)
        ddp_out.sum().backward()  # gradients are all-reduced as usual
        result[backend] = dict(first=first.tolist(), again=again.tolist(), index=index.tolist(),
                               seeded=fused_gumbel.gumbel_softmax(logits, 0.5, seed=77, backend=backend).tolist(),
                               ddp=ddp_out.argmax(-1).tolist())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    assert _seeding.process_rank() == 0
""")


def test_ranks_draw_independent_reproducible_noise(tmp_path):
    backends = ["reference"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])
    init_file = tmp_path / "init"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(rank), "2", str(init_file), str(tmp_path), *backends],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    logits = torch.linspace(-2, 2, 64 * 8).reshape(64, 8)
    for backend in backends:
        r0, r1 = ranks[0][backend], ranks[1][backend]
        assert r0["first"] != r1["first"] and r0["index"] != r1["index"] and r0["ddp"] != r1["ddp"]
        for r in (r0, r1):
            assert r["first"] == r["again"]  # reproducible per rank from its seed
        assert r0["seeded"] == r1["seeded"]  # an explicit seed is used as given on every rank
        # Rank 0 draws exactly what a single process draws.
        torch.manual_seed(0)
        single = fused_gumbel.gumbel_softmax(logits, 0.5, backend=backend)
        assert torch.equal(torch.tensor(r0["first"]), single)
