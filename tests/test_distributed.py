"""Data parallel training (dreamrelation_core/distributed.py) on 2 CPU processes (gloo), as torchrun starts them:
the same run as one process with the same global batch, checkpoints and resume included."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from dreamrelation_core.synthrel import write_exemplars

PAIRS = [(("red", "circle"), ("blue", "square")), (("green", "triangle"), ("yellow", "diamond"))]


def _config(videos, out, **train):
    from dreamrelation_core.config import DataConfig, RCLConfig, RunConfig, TrainConfig
    from dreamrelation_core.triplet import TripletConfig

    train = dict(dict(steps=4, learning_rate=1e-3, warmup_steps=1, checkpoint_every=100, seed=3,
                      caption_dropout=0.5), **train)
    return RunConfig(base="tiny-wan", name="rel", output_dir=str(out), device="cpu",
                     data=DataConfig(videos=str(videos), frames=9, height=32, width=32),
                     lora=TripletConfig(rank=4, alpha=4), train=TrainConfig(**train), rcl=RCLConfig(n_pos=2, n_neg=4))


def _rank(rank, world, port, videos, out, max_steps, resume):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from dreamrelation_core import distributed
    from dreamrelation_core.trainer import RelationTrainer

    assert distributed.init_from_env() and distributed.world_size() == world
    try:
        trainer = RelationTrainer.from_config(_config(videos, out, batch_size=1), progress=False)
        if resume:
            trainer.resume(out)
        trainer.train(max_steps=max_steps)
    finally:
        torch.distributed.destroy_process_group()


def _spawn(videos, out, max_steps, resume=False):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(videos), str(out), max_steps, resume), nprocs=2, join=True)


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_train_as_one_process_with_their_global_batch(tmp_path):
    from dreamrelation_core.trainer import RelationTrainer

    videos = write_exemplars(tmp_path / "exemplars", "approaches", 3, PAIRS, frames=9, size=(32, 32))
    single = RelationTrainer.from_config(_config(videos, tmp_path / "single", batch_size=2), progress=False)
    single.train()
    ranks = tmp_path / "ranks"
    _spawn(videos, ranks, max_steps=2)                              # interrupted after 2 steps …
    assert sorted(p.name for p in (ranks / "checkpoints").iterdir()) == ["step_000002"]
    _spawn(videos, ranks, max_steps=None, resume=True)              # … and resumed on 2 ranks to the end
    one, two = _log(tmp_path / "single"), _log(ranks)
    assert [r["step"] for r in two] == [1, 2, 3, 4]                 # rank 0 alone writes the log
    assert [r["item"] for r in one] == [r["item"] for r in two] and [r["group"] for r in one] == [r["group"] for r in two]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["rcl"] == pytest.approx(a["rcl"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert any(r["rcl"] != 0 for r in two)                          # the gathered banks took part
    expected, got = load_file(str(tmp_path / "single" / "rel.safetensors")), load_file(str(ranks / "rel.safetensors"))
    assert expected.keys() == got.keys()
    assert all(torch.allclose(got[k], v, atol=2e-5) for k, v in expected.items())
