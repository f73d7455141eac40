"""Distillation-weight schedules: values at chosen epochs, increasing counterparts, errors."""

from __future__ import annotations

import math

import pytest

from models.schedules import SCHEDULES, distillation_weight


def test_schedule_names() -> None:
    assert SCHEDULES == ("exponential", "linear", "sigmoid", "cosine", "constant")


def test_every_schedule_the_config_accepts_has_a_shape() -> None:
    from typing import get_args

    from configs.schema import Schedule

    for kind in get_args(Schedule):
        assert 0.0 <= distillation_weight(kind, 3, total_epochs=10) <= 0.1


@pytest.mark.parametrize(
    ("kind", "epoch", "shape"),
    [
        ("exponential", 0, 1.0),
        ("exponential", 1, 0.95),
        ("exponential", 2, 0.9025),
        ("exponential", 10, 0.95**10),
        ("linear", 0, 1.0),
        ("linear", 30, 0.7),
        ("linear", 95, 0.05),
        ("linear", 99, 0.05),  # floored
        ("linear", 400, 0.05),
        ("sigmoid", 0, 800 / 801),
        ("sigmoid", 8, 800 / (800 + math.e)),  # 100 * 8 / 800 = 1
        ("sigmoid", 100, 800 / (800 + math.exp(12.5))),
        ("cosine", 0, 1.0),
        ("cosine", 50, 0.5),
        ("cosine", 100, 0.0),
        ("cosine", 150, 0.0),  # held at its end value
        ("constant", 0, 1.0),
        ("constant", 77, 1.0),
    ],
)
def test_values_are_base_times_shape(kind: str, epoch: int, shape: float) -> None:
    assert distillation_weight(kind, epoch) == pytest.approx(0.1 * shape, abs=1e-12)  # default base 0.1
    assert distillation_weight(kind, epoch, base=1.0) == pytest.approx(shape, abs=1e-12)


def test_default_is_method_exponential() -> None:
    # method.md's default: w(e) = 0.1 * 0.95**e
    assert [distillation_weight("exponential", e) for e in range(4)] == pytest.approx([0.1, 0.095, 0.09025, 0.0857375])


def test_base_and_total_epochs() -> None:
    assert distillation_weight("exponential", 1, base=2.0) == pytest.approx(1.9)
    assert distillation_weight("constant", 5, base=0.3) == 0.3
    assert distillation_weight("cosine", 10, total_epochs=20, base=1.0) == pytest.approx(0.5)
    quarter = 0.5 * (1 + math.cos(math.pi / 4))
    assert distillation_weight("cosine", 5, total_epochs=20, base=1.0) == pytest.approx(quarter)


def test_sigmoid_halves_near_epoch_53_and_stays_finite() -> None:
    # k / (k + exp(100 e / k)) = 1/2 where exp(e / 8) = 800, i.e. e = 8 ln 800 ~= 53.48
    assert distillation_weight("sigmoid", 53, base=1.0) > 0.5 > distillation_weight("sigmoid", 54, base=1.0)
    assert 0.0 <= distillation_weight("sigmoid", 10**7) < 1e-12  # no overflow
    values = [distillation_weight("sigmoid", e) for e in range(0, 120)]
    assert all(a > b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("kind", ["exponential", "linear", "sigmoid", "cosine"])
def test_increasing_counterpart_is_base_times_one_minus_shape(kind: str) -> None:
    for epoch in (0, 3, 40, 99):
        shape = distillation_weight(kind, epoch, base=1.0)
        assert distillation_weight(kind, epoch, base=0.1, increasing=True) == pytest.approx(0.1 * (1.0 - shape))
        assert distillation_weight(kind, epoch, base=1.0, increasing=True) == pytest.approx(1.0 - shape)
    assert distillation_weight(kind, 60, increasing=True) >= distillation_weight(kind, 5, increasing=True)


def test_increasing_hand_values() -> None:
    assert distillation_weight("exponential", 0, increasing=True) == 0.0
    assert distillation_weight("exponential", 1, increasing=True) == pytest.approx(0.1 * 0.05)
    assert distillation_weight("linear", 20, base=1.0, increasing=True) == pytest.approx(0.2)


def test_errors() -> None:
    with pytest.raises(ValueError, match="exponential.*linear.*sigmoid.*cosine.*constant"):
        distillation_weight("step", 0)
    with pytest.raises(ValueError, match="increasing"):
        distillation_weight("constant", 0, increasing=True)
    with pytest.raises(ValueError, match="epoch"):
        distillation_weight("linear", -1)
    with pytest.raises(ValueError, match="total_epochs"):
        distillation_weight("cosine", 0, total_epochs=0)


def test_soft_label_weights_decay_on_the_sigmoid_with_beta_floored() -> None:
    from models.schedules import soft_label_weights

    a0, b0 = soft_label_weights("sigmoid", 0, 100, 0.8, 0.8)
    assert a0 == pytest.approx(0.8 * 800 / 801) and b0 == pytest.approx(0.8 * 800 / 801)
    a, b = soft_label_weights("sigmoid", 100, 100, 0.8, 0.8)
    assert a == pytest.approx(0.8 * 0.00297, rel=0.01) and b == 0.5
    assert soft_label_weights("constant", 7, 100, 0.3, 0.4) == (0.3, 0.4)
    assert soft_label_weights("sigmoid", 100, 100, 0.8, 0.4)[1] < 0.01  # no floor below 0.5
