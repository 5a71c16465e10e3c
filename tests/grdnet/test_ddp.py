"""A real 2-process DistributedDataParallel run (torchrun, gloo on CPU): both ranks end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from linecam.grdnet.model import build_grdnet
from linecam.grdnet.profiles import get_profile
from tests.grdnet.builders import TINY, make_vial_dataset


def test_two_rank_cpu_ddp_ends_with_identical_weights(tmp_path: Path) -> None:
    data = make_vial_dataset(tmp_path / "data", n_train=9)
    out = tmp_path / "model"
    cfg = {"data": str(data), "out": str(out), "profile": "fast", "profile_overrides": TINY, "epochs": 2,
           "batch_size": 2, "max_steps_per_epoch": 2, "seed": 5, "progress": False, "precision": "fp32"}
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, sys\n"
        "import torch, torch.distributed as dist\n"
        "from linecam.grdnet.train import TrainConfig, Trainer, init_distributed, run_training\n"
        "cfg = TrainConfig(**json.loads(sys.argv[1]))\n"
        "info = init_distributed('cpu')\n"
        "trainer = Trainer(cfg, info)\n"
        "trainer.fit()\n"
        "state = {**{'model.' + k: v for k, v in trainer.model.state_dict().items()},\n"
        "         **{'disc.' + k: v for k, v in trainer.disc.state_dict().items()}}\n"
        "torch.save(state, sys.argv[2] + f'/rank{info.rank}.pt')\n"
        "json.dump({'rank': info.rank, 'world': info.world, 'history': trainer.history},\n"
        "          open(sys.argv[2] + f'/rank{info.rank}.json', 'w'))\n"
        "dist.barrier()\n"
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         json.dumps(cfg), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in infos] == [2, 2]
    # Each rank trained on its own shard (different losses) yet the synchronised weights are identical.
    assert infos[0]["history"][0]["train_u"] != infos[1]["history"][0]["train_u"]
    assert infos[0]["history"][-1]["val_loss"] == infos[1]["history"][-1]["val_loss"]
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert s0.keys() == s1.keys()
    for k in s0:
        assert torch.equal(s0[k], s1[k]), f"rank weights differ at {k}"
    last = torch.load(out / "training" / "checkpoint_last.pt", weights_only=False)
    assert last["epoch"] == 2  # rank 0 wrote the checkpoint after both epochs
    for k, v in last["model"].items():
        assert torch.equal(v, s0["model." + k]), k
    # Weights moved away from the seeded init (training really happened on both ranks).
    torch.manual_seed(5)
    fresh = build_grdnet(get_profile("fast", **TINY)).state_dict()
    moved = [k for k, v in fresh.items() if v.is_floating_point() and not torch.equal(v, s0["model." + k])]
    assert len(moved) > len(fresh) // 2
