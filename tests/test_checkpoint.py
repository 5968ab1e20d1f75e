"""Checkpoints are data: saved atomically, loaded with weights_only, validated with clear errors."""

import pytest
import torch

from fcnseg.checkpoint import (
    CheckpointError,
    ModelMeta,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_atomically,
)
from fcnseg.models import FCNAlexNet

META = ModelMeta(
    model="fcn-alexnet", num_classes=3, class_names=("a", "b", "c"), palette=((1, 2, 3), (4, 5, 6), (7, 8, 9)),
    normalization="imagenet",
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = FCNAlexNet(num_classes=3).eval()
    torch.nn.init.normal_(model.score_fr.weight, std=0.01)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_atomically(make_checkpoint(model, META, step=5), path)
    return model, path


def test_round_trip_restores_model_and_meta(saved):
    model, path = saved
    loaded, meta = model_from_checkpoint(path)
    assert meta == META
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert load_checkpoint(path)["step"] == 5
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_other_files_get_clear_errors(tmp_path, saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nothing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="corrupt.pt: not a readable fcnseg checkpoint"):
        load_checkpoint(corrupt)
    plain = tmp_path / "plain.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not an fcnseg checkpoint"):
        load_checkpoint(plain)
    checkpoint = load_checkpoint(path)
    future = tmp_path / "future.pt"
    torch.save({**checkpoint, "format_version": 99}, future)
    with pytest.raises(CheckpointError, match="newer than this fcnseg"):
        load_checkpoint(future)
    other = tmp_path / "other.pt"
    torch.save({**checkpoint, "model": "fcn4s"}, other)
    with pytest.raises(CheckpointError, match="unknown model 'fcn4s'"):
        load_checkpoint(other)


def test_weights_of_another_model_are_a_clear_error_not_a_traceback(tmp_path, saved):
    _, path = saved
    checkpoint = load_checkpoint(path)
    wrong = tmp_path / "wrong.pt"
    torch.save({**checkpoint, "model_args": {"num_classes": 5}}, wrong)
    with pytest.raises(CheckpointError, match=r"shape mismatch score_fr.weight: checkpoint \(3, 4096, 1, 1\)"):
        model_from_checkpoint(wrong)
    torch.save({**checkpoint, "model": "fcn-alexnet-tv"}, wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(wrong)


def test_code_in_a_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "fcnseg-checkpoint", "payload": Payload()}, evil)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(evil)
