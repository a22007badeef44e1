"""LoRA continued training under DistributedDataParallel: 2 CPU processes, gloo, the package's own
``train``/``save_trained`` (DistributedSampler shards, all-reduced loss, rank-0 atomic save)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("transformers")
pytest.importorskip("peft")

WORLD_SIZE = 2

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    from lmops.methods.domain_rc import PackedSequence

    # one repeating pattern, each sequence starting elsewhere in it, of unequal lengths: learnable fast
    period = torch.randint(7, 263, (5,), generator=torch.Generator().manual_seed(0)).tolist()
    return [PackedSequence((period * 10)[i: i + 40 - 2 * i], [f"s{i}"]) for i in range(6)]


def _worker(rank: int, port: int, out: str) -> None:
    import os

    from safetensors.torch import save_file

    from lmops.methods.domain_rc import evaluate_loss, save_trained, train
    from lmops.methods.domain_rc.demo import tiny_causal_lm

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(1000 + rank)  # train() must seed the adapters itself, whatever the caller's RNG
        model, tok = tiny_causal_lm(seed=0, max_positions=64)
        data = _data()
        before = evaluate_loss(model, data)
        result = train(model, tok, data, adapter="lora", rank=4, alpha=8, lr=2e-2, epochs=5, batch_size=1, log=None)
        after = evaluate_loss(result.model, data)
        lora = {n: p.detach().clone().contiguous() for n, p in result.model.named_parameters() if p.requires_grad}
        save_file(lora, f"{out}/rank{rank}.safetensors")
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"steps": result.steps, "losses": result.step_losses, "world": result.world_size,
                       "before": before, "after": after}, f)
        save_trained(result, f"{out}/saved", tokenizer=tok)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_lora_keeps_ranks_in_sync_and_learns(tmp_path: Path):
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD_SIZE)]
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) == 2 * 14
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), f"{key} differs between ranks"
    assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in ranks[0].items())
    # 6 sequences over 2 ranks, batch 1: 3 steps per epoch per rank
    assert logs[0]["steps"] == logs[1]["steps"] == 15 and logs[0]["world"] == 2
    assert logs[0]["losses"] == logs[1]["losses"]  # the logged loss is the all-reduced mean
    losses = logs[0]["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    assert logs[0]["after"] < logs[0]["before"] - 0.3
    saved = tmp_path / "saved"
    assert (saved / "adapter_model.safetensors").is_file() and (saved / "domain_rc_train.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".saved")]  # no temporary directory left
