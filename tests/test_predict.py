"""Predict at scale: globs and lists, size batches through workers and a writer pool (the same labels as a plain
eager pass), the manifest, resuming with --skip-existing, and sharding over ranks. The torchrun run itself is
in tests/test_distributed.py."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scorers import SHAPES_META, random_scorer

from fcnseg.checkpoint import make_checkpoint
from fcnseg.cli import main
from fcnseg.data.base import DataError, read_image
from fcnseg.data.transforms import normalize
from fcnseg.predict import iter_predictions, merge_manifests, plan_predictions, predict_paths, read_manifest
from fcnseg.predict.pipeline import size_batches

META = SHAPES_META


@pytest.fixture(scope="module")
def scorer():
    return random_scorer().eval()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Nine photos of two sizes, interleaved (so size batches reorder them), in a folder with a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    generator = np.random.default_rng(0)
    for i in range(9):
        size = (48, 64) if i % 3 else (64, 40)
        pixels = generator.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / ("sub" if i >= 6 else "") / f"p{i}.png")
    return root


def labels_of(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


def eager_labels(model, image_path) -> np.ndarray:
    """The independent path: the plain eager model on the image, no inference rewrites, no batching."""
    with torch.no_grad():
        x = normalize(read_image(image_path), "lite").unsqueeze(0)
        return model(x)[0].argmax(0).numpy()


def test_globs_and_lists_expand_relative_to_their_folder(photos, tmp_path):
    plan = plan_predictions([str(photos / "**" / "p[0-2].png")], tmp_path / "out")
    assert [path.name for path, _ in plan.jobs] == ["p0.png", "p1.png", "p2.png"]
    plan = plan_predictions([str(photos / "**" / "p[5-6].png")], tmp_path / "out")  # mirrors the folders below
    assert [stem for _, stem in plan.jobs] == [tmp_path / "out" / "p5", tmp_path / "out" / "sub" / "p6"]
    listing = photos / "sub" / "list.txt"
    listing.write_text("# two of them\np6.png\n\n../p3.png\n")
    plan = plan_predictions([f"@{listing}"], tmp_path / "out")
    assert [path.resolve() for path, _ in plan.jobs] == [(photos / "sub" / "p6.png").resolve(),
                                                          (photos / "p3.png").resolve()]
    with pytest.raises(DataError, match="matches no files"):
        plan_predictions([str(photos / "*.jpeg")], tmp_path / "out")
    with pytest.raises(DataError, match="cannot read the image list"):
        plan_predictions([f"@{photos / 'missing.txt'}"], tmp_path / "out")


def test_ranks_share_the_jobs_without_overlap(photos, tmp_path):
    everything = plan_predictions([photos], tmp_path / "out").jobs
    shares = [plan_predictions([photos], tmp_path / "out", rank=r, world_size=3) for r in range(3)]
    assert sorted(job for plan in shares for job in plan.jobs) == sorted(everything)
    assert sum(len(plan.jobs) for plan in shares) == len(everything)
    assert [plan.manifest_path.name for plan in shares] == [f"manifest.rank{r}.jsonl" for r in range(3)]
    with pytest.raises(ValueError, match="rank"):
        plan_predictions([photos], tmp_path / "out", rank=3, world_size=3)


def test_size_batches_keep_sizes_apart_and_lose_nothing():
    def item(index, height):
        return index, torch.zeros(3, height, 8, dtype=torch.uint8), None

    items = [item(0, 4), item(1, 6), item(2, 4), (3, None, "bad"), item(4, 4), item(5, 6), item(6, 4)]
    batches = list(size_batches(items, batch_size=2))
    assert all(len(batch) <= 2 for batch in batches)
    assert all(len({tuple(x[1].shape) for x in batch if x[1] is not None}) <= 1 for batch in batches)
    assert sorted(x[0] for batch in batches for x in batch) == list(range(7))
    assert [3] in [[x[0] for x in batch] for batch in batches]  # the unreadable image alone
    assert [0, 2] == [x[0] for x in batches[0]]  # full batches go as soon as they are full


def test_batched_workers_and_writers_give_the_eager_labels_in_plan_order(scorer, photos, tmp_path):
    (photos / "broken.png").write_bytes(b"not a png")
    try:
        results = predict_paths(scorer, META, [photos], tmp_path / "out", batch_size=4, workers=2, writers=3,
                                overlay="side-by-side", legend="shares")
    finally:
        (photos / "broken.png").unlink()
    plan = plan_predictions([photos], tmp_path / "other")
    assert [result["input"] for result in results if result["error"] is None] == [str(p) for p, _ in plan.jobs]
    (broken,) = [result for result in results if result["error"] is not None]
    assert "broken.png" in broken["error"] and broken["labels"] is None
    for result in results:
        if result["error"] is not None:
            continue
        got = labels_of(result["labels"])
        expected = eager_labels(scorer, result["input"])
        assert got.shape == expected.shape == (result["height"], result["width"])
        assert (got == expected).mean() > 0.999
        assert Image.open(result["overlay"]).width > 3 * result["width"]  # side by side, and a legend
        counts = np.bincount(got.reshape(-1), minlength=3) / got.size
        assert result["classes"] == {name: round(float(counts[i]), 4) for i, name in enumerate(META.class_names)
                                     if counts[i] > 0}
    assert (tmp_path / "out" / "sub" / "p6_labels.png").is_file()  # outputs mirror the folders


def test_manifest_has_one_line_per_image_as_the_results(scorer, photos, tmp_path):
    predict_paths(scorer, META, [photos], tmp_path / "out", overlay="none", batch_size=3)
    results = predict_paths(scorer, META, [photos], tmp_path / "out", overlay="none", batch_size=3)  # a rerun
    records, damaged = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert not damaged
    assert sorted(records, key=lambda r: r["input"]) == sorted(results, key=lambda r: r["input"])
    assert all(record["ms"] > 0 and record["overlay"] is None for record in records)


def test_skip_existing_resumes_and_repairs_the_manifest(scorer, photos, tmp_path):
    out = tmp_path / "out"
    first = predict_paths(scorer, META, [photos], out, overlay="blend")
    finished = {r["input"]: Path(r["labels"]).stat().st_mtime_ns for r in first}
    lost = Path(first[4]["labels"])
    lost.unlink()  # this image was not finished
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:2]) + "\n" + lines[2][:17])  # a crash cut line 3; lines 4.. never written
    plan = plan_predictions([photos], out, skip_existing=True)
    assert [str(path) for path, _ in plan.jobs] == [first[4]["input"]]
    (rerun,) = list(iter_predictions(scorer, META, plan, overlay="blend"))
    assert rerun["input"] == first[4]["input"] and lost.is_file()
    for result in first:
        if result["input"] != rerun["input"]:  # not written again
            assert Path(result["labels"]).stat().st_mtime_ns == finished[result["input"]]
    assert merge_manifests(out) == len(first)
    records, damaged = read_manifest(manifest)
    assert not damaged and sorted(r["input"] for r in records) == sorted(r["input"] for r in first)
    by_input = {r["input"]: r for r in records}
    rebuilt = by_input[first[6]["input"]]  # its line was lost in the crash: rebuilt from the label PNG
    assert rebuilt["resumed"] and rebuilt["ms"] is None and rebuilt["classes"] == first[6]["classes"]
    assert rebuilt["overlay"] == first[6]["overlay"]


def test_cli_batches_skips_existing_and_writes_the_manifest(scorer, photos, tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    torch.save(make_checkpoint(scorer, META), checkpoint)
    out = tmp_path / "out"
    args = ["predict", str(photos), "--checkpoint", str(checkpoint), "--out", str(out), "--batch-size", "4",
            "--workers", "0", "--overlay", "none"]
    assert main(args) == 0
    assert capsys.readouterr().out.count("_labels.png") == 9
    assert main([*args, "--skip-existing", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "9 images already have outputs" in captured.err
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 9 and len({json.loads(line)["input"] for line in lines}) == 9
    assert not list(out.glob("manifest.rank*")) and not [p for p in os.listdir(out) if p.endswith(".tmp")]


class WriteCalls:
    """A text stream that records each ``write`` call: what ranks sharing one pipe would see as separate writes."""

    def __init__(self):
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_each_printed_line_is_one_write_so_ranks_cannot_cut_it(scorer, photos, tmp_path, monkeypatch):
    checkpoint = tmp_path / "model.pt"
    torch.save(make_checkpoint(scorer, META), checkpoint)
    stdout = WriteCalls()
    monkeypatch.setattr("sys.stdout", stdout)
    assert main(["predict", str(photos), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                 "--overlay", "none", "--workers", "0"]) == 0
    printed = [call for call in stdout.calls if call]
    assert len(printed) == 9  # one call per image
    assert all(call.endswith("\n") and call.count("\n") == 1 and "_labels.png: " in call for call in printed)
