"""Interrupted runs continue exactly. Real ``python -m fcnseg train`` processes get SIGINT, SIGTERM or SIGKILL
between checkpoints; ``--resume`` then gives the uninterrupted run's weights, optimizer state and log.csv. A
truncated last.pt falls back to last.prev.pt. The signal handlers themselves are tested in-process."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from shapes_data import make_shapes_folder

from fcnseg.checkpoint import load_checkpoint
from fcnseg.training.interrupts import stop_on_signals
from fcnseg.training.logs import drop_rows_after

ITERS, EVERY = 14, 4  # last.pt at steps 4, 8, 12 and 14 (the end); validation at 6 and 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_shapes_folder(tmp_path_factory.mktemp("tiny"), train=8, val=2, size=32)


def train_command(root, out, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "fcnseg", "train", "--model", "fcn32s-lite0", "--dataset", "folder", "--root", str(root),
        "--out", str(out), f"iters={ITERS}", "batch_size=2", "crop_size=32", "scale_range=null", "val_every=6",
        "val_max_images=1", "workers=0", "threads=1", "log_every=1", f"checkpoint_every={EVERY}",
        "checkpoint_minutes=null", *extra,
    ]


def run_to_end(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    done = run_to_end(train_command(tiny, out))
    assert done.returncode == 0, done.stderr
    return out


def logged_steps(out) -> list[int]:
    """The steps of log.csv's complete rows (the file may be mid-write)."""
    path = out / "log.csv"
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    return [int(line.split(",")[0]) for line in lines[1:] if line.endswith("\n")]


def log_rows(out) -> list[dict]:
    with (out / "log.csv").open(newline="") as stream:
        return [{key: value for key, value in row.items() if key != "train_minutes"} for row in csv.DictReader(stream)]


def freeze_between_checkpoints(process: subprocess.Popen, out) -> int:
    """SIGSTOP the run once log.csv has a row past its latest last.pt (so a kill now loses logged steps); returns
    the last logged step. The row of step k is written before k's checkpoint: a last row that is no multiple of
    EVERY means last.pt is complete and older."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        steps = logged_steps(out)
        if steps and steps[-1] > EVERY and steps[-1] % EVERY:
            process.send_signal(signal.SIGSTOP)
            while open(f"/proc/{process.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
                time.sleep(0.001)
            steps = logged_steps(out)
            if steps[-1] % EVERY:
                assert load_checkpoint(out / "last.pt")["step"] < steps[-1]
                return steps[-1]
            process.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("no log row past a checkpoint in time")


def start(command: list[str], out) -> subprocess.Popen:
    out.mkdir()
    return subprocess.Popen(command, stdout=(out / "stdout.txt").open("w"), stderr=(out / "stderr.txt").open("w"))


def assert_same_run(out, reference) -> None:
    got, expected = load_checkpoint(out / "last.pt"), load_checkpoint(reference / "last.pt")
    assert got["step"] == expected["step"] == ITERS
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    assert got["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]
    assert got["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    for index, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(got["optimizer"]["state"][index][key], value), (index, key)
    assert log_rows(out) == log_rows(reference)  # each step once, as in the uninterrupted run
    assert [int(row["step"]) for row in log_rows(out)] == list(range(1, ITERS + 1))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_and_resume_continues_exactly(tiny, uninterrupted, tmp_path, signum):
    out = tmp_path / "run"
    process = start(train_command(tiny, out), out)
    frozen_at = freeze_between_checkpoints(process, out)
    process.send_signal(signum)
    process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=120) == 128 + signum  # 130, 143
    stderr = (out / "stderr.txt").read_text()
    assert "Traceback" not in stderr
    step = load_checkpoint(out / "last.pt")["step"]
    assert frozen_at <= step <= frozen_at + 1  # the step under way was finished, then saved
    assert f"fcnseg train: interrupted at step {step}; add --resume to continue\n" in stderr
    assert logged_steps(out)[-1] == step
    resumed = run_to_end(train_command(tiny, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted)


def test_sigkill_between_checkpoints_then_resume_drops_the_replayed_rows(tiny, uninterrupted, tmp_path):
    out = tmp_path / "run"
    process = start(train_command(tiny, out), out)
    frozen_at = freeze_between_checkpoints(process, out)
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert load_checkpoint(out / "last.pt")["step"] < frozen_at == logged_steps(out)[-1]
    resumed = run_to_end(train_command(tiny, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted)


def test_a_truncated_last_pt_falls_back_to_last_prev_pt(tiny, uninterrupted, tmp_path):
    out = tmp_path / "run"
    stopped = run_to_end(train_command(tiny, out, "stop_after=5"))  # last.pt at 4 (now last.prev.pt), then 5
    assert stopped.returncode == 0, stopped.stderr
    assert "step 5: no validation yet;" in stopped.stdout and "-100" not in stopped.stdout
    assert load_checkpoint(out / "last.prev.pt")["step"] == 4
    size = (out / "last.pt").stat().st_size
    with (out / "last.pt").open("r+b") as stream:
        stream.truncate(size // 2)
    resumed = run_to_end(train_command(tiny, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "Traceback" not in resumed.stderr
    assert f"{out / 'last.pt'} is unreadable" in warnings[0]
    assert f"resuming from {out / 'last.prev.pt'} (step 4)" in warnings[0]
    assert (out / "last.unreadable.pt").stat().st_size == size // 2
    assert_same_run(out, uninterrupted)


def test_handlers_record_signals_a_second_ctrl_c_raises_and_the_old_handlers_return():
    def previous_handler(signum, frame):
        raise AssertionError("the previous handler ran during training")

    old = signal.signal(signal.SIGTERM, previous_handler)
    try:
        before = signal.getsignal(signal.SIGINT)
        with stop_on_signals() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.signum == signal.SIGTERM
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C only asks to stop
            assert stop.signum == signal.SIGTERM
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is before
        assert signal.getsignal(signal.SIGTERM) is previous_handler
        with stop_on_signals(force_on_second_sigint=False) as stop:  # under torchrun
            for _ in range(3):
                signal.raise_signal(signal.SIGINT)
            assert stop.signum == signal.SIGINT
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_second_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, tmp_path, capsys):
    import fcnseg.training
    from fcnseg.cli import main

    def interrupted_twice(config, *, resume):
        raise KeyboardInterrupt

    monkeypatch.setattr(fcnseg.training, "train", interrupted_twice)
    assert main(["train", "--model", "fcn32s-lite0", "--dataset", "folder", "--root", str(tmp_path)]) == 130
    assert capsys.readouterr().err == ("fcnseg train: interrupted again: stopped at once, without saving; --resume "
                                       "continues from the last checkpoint\n")


def test_drop_rows_after_keeps_complete_rows_up_to_the_step(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"step,loss\r\n1,0.5\r\n2,0.4\r\n3,0.3\r\n4,0.")  # killed while writing step 4
    assert drop_rows_after(path, 2) == 2
    assert path.read_bytes() == b"step,loss\r\n1,0.5\r\n2,0.4\r\n"
    assert drop_rows_after(path, 5) == 0 and drop_rows_after(tmp_path / "none.csv", 0) == 0
    path.write_bytes(b"step,loss\r\n1,0.5\r\n2,0.")
    assert drop_rows_after(path, 5) == 1 and path.read_bytes() == b"step,loss\r\n1,0.5\r\n"
    assert os.listdir(tmp_path) == ["log.csv"]  # no temporary file left
