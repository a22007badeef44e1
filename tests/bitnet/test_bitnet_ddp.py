"""QAT of a converted tiny Llama under DistributedDataParallel: 2 CPU processes, gloo backend."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latent_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from lmops.bitnet import BitLinear

    return {
        f"{name}.weight": m.weight.detach().clone().contiguous()
        for name, m in model.named_modules()
        if isinstance(m, BitLinear)
    }


def _worker(rank: int, port: int, out: str) -> None:
    import os

    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel

    from tiny_models import VOCAB, tiny_model

    import lmops.bitnet as bitnet

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        model = bitnet.convert(tiny_model("llama", seed=0)).train()  # same init on both ranks
        if rank == 0:
            save_file(_latent_weights(model), f"{out}/initial.safetensors")
        ddp = DistributedDataParallel(model)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        for _ in range(STEPS):
            ids = torch.randint(3, VOCAB, (2, 12), generator=g)
            loss = ddp(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        save_file(_latent_weights(model), f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_qat_keeps_ranks_in_sync(tmp_path: Path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    initial = load_file(str(tmp_path / "initial.safetensors"))
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD_SIZE)]
    assert initial.keys() == ranks[0].keys() == ranks[1].keys() and len(initial) == 14
    for key, w0 in ranks[0].items():
        assert torch.equal(w0, ranks[1][key]), f"{key} differs between ranks"
        assert not torch.equal(w0, initial[key]), f"{key} did not train"
