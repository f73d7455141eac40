"""The lane-mask dropout (models/dropout.py): its rate, its expectation, its determinism, and the
student's attention written out for it against SDPA."""

from __future__ import annotations

import math

import pytest
import torch

from models.dropout import Dropout, drop_levels, keep_mask, keep_scale


def test_keep_rate_is_one_minus_p_within_binomial_noise() -> None:
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of the four lanes per word
    for p in (0.1, 0.3, 0.5):
        keep = keep_mask((n,), torch.device("cpu"), p)
        expected = 1 - drop_levels(p) / 65536
        sigma = math.sqrt(expected * (1 - expected) / n)
        assert abs(keep.float().mean().item() - expected) < 5 * sigma
        # each of the four lanes of a word is uniform on its own (no lane fixed by a sign bit)
        lanes = keep[: n - n % 4].view(-1, 4).float().mean(dim=0)
        assert torch.all((lanes - expected).abs() < 5 * sigma * 2)


def test_quantised_probability_and_unbiased_scale() -> None:
    assert drop_levels(0.1) == 6554
    assert keep_scale(0.1) == pytest.approx(1 / (1 - 6554 / 65536))
    with pytest.raises(ValueError):
        Dropout(1.0)
    torch.manual_seed(1)
    x = torch.full((2_000_000,), 3.0)
    out = Dropout(0.25).train()(x)
    values = out.unique().tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(3.0 * keep_scale(0.25))]
    assert out.mean().item() == pytest.approx(3.0, rel=5e-3)


def test_deterministic_per_seed_and_identity_in_eval() -> None:
    layer = Dropout(0.3).train()
    x = torch.randn(64, 33)
    torch.manual_seed(7)
    a = layer(x)
    torch.manual_seed(7)
    b = layer(x)
    torch.manual_seed(8)
    c = layer(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert layer.eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_gradient_is_the_mask_times_the_scale() -> None:
    x = torch.randn(40, 17, requires_grad=True)
    torch.manual_seed(3)
    out = Dropout(0.4).train()(x)
    out.sum().backward()
    kept = out.detach() != 0
    torch.testing.assert_close(x.grad, kept.float() * keep_scale(0.4))


@pytest.mark.parametrize("lanes", [True, False])
def test_rows_of_a_padded_tensor_drop_as_the_whole_tensor_does(lanes: bool) -> None:
    from models.student import RowPacking

    x = torch.randn(5, 7, 12)
    mask = torch.rand(5, 7) > 0.4
    layer = Dropout(0.3).train()
    Dropout.lanes = lanes
    try:
        torch.manual_seed(11)
        whole = layer(x)[mask]
        after_whole = torch.rand(4)
        torch.manual_seed(11)
        rows = layer.rows_of(x[mask], RowPacking(mask))
        after_rows = torch.rand(4)
    finally:
        Dropout.lanes = True
    torch.testing.assert_close(rows, whole)
    assert torch.equal(after_whole, after_rows)


def test_written_out_attention_equals_sdpa_when_nothing_is_dropped() -> None:
    """Training on CPU with p > 0 takes the written-out attention; with a p that rounds to no dropped
    level it must compute what SDPA (the evaluation path) computes, padded keys included."""
    from models.student import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(hidden=32, heads=4, dropout=1e-6)
    assert drop_levels(1e-6) == 0
    x = torch.randn(3, 9, 32)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 1:] = False
    trained = block.train()(x, mask)
    evaluated = block.eval()(x, mask)
    torch.testing.assert_close(trained, evaluated, rtol=1e-5, atol=1e-5)


def test_written_out_attention_never_attends_to_padded_keys() -> None:
    from models.student import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(hidden=16, heads=2, dropout=0.3).train()
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    changed = x.clone()
    changed[0, 4:] = 100.0  # padded frames of video 0
    torch.manual_seed(5)
    a = block(x, mask)
    torch.manual_seed(5)
    b = block(changed, mask)
    torch.testing.assert_close(a[0, :4], b[0, :4])
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("lanes", [True, False])
def test_a_transposed_layout_drops_as_the_original_does(lanes: bool) -> None:
    """The packed attention keeps its weights head-major (heads, N, L, L); its dropout must use the
    mask that the padded attention draws for (N, heads, L, L), and leave the stream alike."""
    y = torch.randn(3, 4, 5, 5)
    layer = Dropout(0.3).train()
    Dropout.lanes = lanes
    try:
        torch.manual_seed(2)
        expected = layer(y).transpose(0, 1)
        after_expected = torch.rand(4)
        torch.manual_seed(2)
        swapped = layer.swapped_of(y.transpose(0, 1).contiguous(), 0, 1)
        after_swapped = torch.rand(4)
    finally:
        Dropout.lanes = True
    assert swapped.is_contiguous()
    torch.testing.assert_close(swapped, expected)
    assert torch.equal(after_expected, after_swapped)
    assert (swapped == 0).any() and (swapped != 0).any()
