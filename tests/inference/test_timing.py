"""fcnseg.inference.timing: alternating timed calls, medians, the margin, and the decision's log line."""

import pytest
import torch
from torch import nn

from fcnseg.inference.timing import StepDecision, Timing, timed_decision


class Named(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x):
        return x


def scripted_timer(times: dict[str, list[float]], calls: list[str]):
    """Returns each module's next time from ``times`` and records the order of the calls."""

    def timer(module, example):
        calls.append(module.name)
        return times[module.name].pop(0)

    return timer


def test_calls_alternate_and_medians_ignore_an_outlier():
    calls = []
    times = {"candidate": [1.0, 9.0, 1.0, 1.0, 1.0], "baseline": [2.0, 2.0, 2.0, 2.0, 2.0]}  # 9 s: a load spike
    timing = Timing(timer=scripted_timer(times, calls), budget_s=100.0)
    candidate_s, baseline_s = timing.medians(Named("candidate"), Named("baseline"), torch.zeros(1))
    assert (candidate_s, baseline_s) == (1.0, 2.0)
    assert calls == ["candidate", "baseline", "baseline", "candidate"] * 2 + ["candidate", "baseline"]  # ABBA


def test_rounds_stop_after_the_minimum_once_the_budget_is_spent():
    calls = []
    timing = Timing(timer=scripted_timer({"a": [0.2] * 5, "b": [0.2] * 5}, calls), budget_s=0.5)
    timing.medians(Named("a"), Named("b"), torch.zeros(1))
    assert len(calls) == 2 * timing.min_rounds  # 0.8 s spent after two rounds
    calls.clear()
    timing = Timing(timer=scripted_timer({"a": [0.01] * 5, "b": [0.01] * 5}, calls), budget_s=0.5)
    timing.medians(Named("a"), Named("b"), torch.zeros(1))
    assert len(calls) == 2 * timing.max_rounds


@pytest.mark.parametrize("candidate_ms, kept, reason", [(9.6, True, "faster"), (9.8, False, "not faster by 3%"),
                                                        (10.0, False, "not faster by 3%"), (10.5, False, "slower")])
def test_a_candidate_is_kept_only_when_faster_by_the_margin(candidate_ms, kept, reason):
    timing = Timing(timer=lambda module, x: (candidate_ms if module.name == "with" else 10.0) / 1e3)
    decision = timed_decision("fuse_relu", Named("with"), Named("without"), torch.zeros(1), timing)
    assert (decision.step, decision.kept, decision.reason) == ("fuse_relu", kept, reason)
    assert decision.ms == pytest.approx(candidate_ms) and decision.without_ms == pytest.approx(10.0)


def test_decision_lines():
    assert str(StepDecision("channels_last", kept=True, reason="faster", ms=31.24, without_ms=40.1)) == \
        "channels_last: kept (31.2 ms vs 40.1 ms without)"
    assert str(StepDecision("pad_skip", kept=False, reason="slower", ms=52.0, without_ms=50.3)) == \
        "pad_skip: dropped, slower (52.0 ms vs 50.3 ms without)"
    assert str(StepDecision("fuse_lite", kept=True, reason="not timed")) == "fuse_lite: kept (not timed)"
    assert str(StepDecision("bf16", kept=False, reason="inaccurate: relative error 8.0e-02 > 5e-02")) == \
        "bf16: dropped, inaccurate: relative error 8.0e-02 > 5e-02"
    assert str(StepDecision("fuse_relu", kept=False, tried=False, reason="no oneDNN")) == \
        "fuse_relu: skipped (no oneDNN)"
