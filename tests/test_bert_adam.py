"""BertAdam against a hand computation, the reference schedule, and train.optimizer wiring."""

from __future__ import annotations

import math

import pytest
import torch

from models.bert_adam import BertAdam, reference_warmup_linear


def test_two_steps_match_a_hand_computation():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    bias = torch.nn.Parameter(torch.tensor([0.5]))
    opt = BertAdam([{"params": [p], "weight_decay": 0.01}, {"params": [bias], "weight_decay": 0.0}], lr=0.1)

    # Step 1: gradient (3, 4) has norm 5 and is clipped to norm 1: (0.6, 0.8) (up to the 1e-6 guard).
    p.grad, bias.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.2])
    opt.step()
    g = [3 / (5 + 1e-6), 4 / (5 + 1e-6)]
    m = [0.1 * gi for gi in g]
    v = [0.001 * gi * gi for gi in g]
    # No bias correction: u = m / (sqrt(v) + 1e-6) + 0.01 * p
    expect = [w - 0.1 * (mi / (math.sqrt(vi) + 1e-6) + 0.01 * w) for w, mi, vi in zip([1.0, -2.0], m, v)]
    assert p.detach().tolist() == pytest.approx(expect, rel=1e-6)
    # The bias group has no decay; its gradient 0.2 is under the clip norm: u = 0.02 / (sqrt(4e-5) + 1e-6).
    b1 = 0.5 - 0.1 * (0.02 / (math.sqrt(0.001 * 0.04) + 1e-6))
    assert bias.item() == pytest.approx(b1, rel=1e-6)
    # (Bias-corrected Adam would step by lr * 1 = 0.1 here; BertAdam by about lr * 0.1 / sqrt(0.001) = 0.32.)

    # Step 2: a small gradient, no clipping.
    before = p.detach().tolist()
    p.grad, bias.grad = torch.tensor([0.1, -0.2]), None
    opt.step()
    g2 = [0.1, -0.2]
    m2 = [0.9 * mi + 0.1 * gi for mi, gi in zip(m, g2)]
    v2 = [0.999 * vi + 0.001 * gi * gi for vi, gi in zip(v, g2)]
    expect2 = [w - 0.1 * (mi / (math.sqrt(vi) + 1e-6) + 0.01 * w) for w, mi, vi in zip(before, m2, v2)]
    assert p.detach().tolist() == pytest.approx(expect2, rel=1e-6)
    assert bias.item() == pytest.approx(b1, rel=1e-6)  # no gradient, no step


def test_reference_schedule_warms_up_from_zero_then_decays_to_zero():
    factor = reference_warmup_linear(total_steps=100, warmup_fraction=0.1)
    assert factor(0) == 0.0  # the reference's very first step does not move
    assert factor(5) == pytest.approx(0.5)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == 0.0 and factor(120) == 0.0
    assert reference_warmup_linear(100, 0.0)(0) == pytest.approx(1.0)


def test_optimizer_state_round_trips_for_resume():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = BertAdam([p], lr=0.01)
    p.grad = torch.tensor([0.3, -0.1])
    opt.step()
    again = BertAdam([torch.nn.Parameter(p.detach().clone())], lr=0.01)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
