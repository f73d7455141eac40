"""The DL-DKD student: shapes, masking, fusion, encode-once helpers and branch independence."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import LossWeights, branch_loss
from models.student import (
    Branch,
    BranchOutput,
    DLDKDStudent,
    StudentConfig,
    frame_cosine,
    frame_dot,
    max_over_frames,
)

VIDEO_DIM, TEXT_DIM = 12, 10
# Padded entries may change the reduction order of matmuls over a longer axis, so "unchanged"
# means equal up to float32 rounding.
TOL = dict(rtol=1e-5, atol=1e-6)


def small_config(**overrides: object) -> StudentConfig:
    params: dict[str, object] = dict(
        video_dim=VIDEO_DIM, text_dim=TEXT_DIM, hidden=16, heads=4, max_frames=12, max_tokens=9
    )
    params.update(overrides)
    return StudentConfig(**params)  # type: ignore[arg-type]


def make_student(seed: int = 0, **overrides: object) -> DLDKDStudent:
    torch.manual_seed(seed)
    return DLDKDStudent(small_config(**overrides)).eval()


def make_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 videos of 5, 3 and 4 valid frames (padded to 5); 4 queries of 4, 2, 3 and 1 valid tokens."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(3, 5, VIDEO_DIM, generator=g)
    video_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    tokens = torch.randn(4, 4, TEXT_DIM, generator=g)
    token_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    return video, video_mask, tokens, token_mask


def pad_with_noise(x: torch.Tensor, mask: torch.Tensor, extra: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append `extra` padded positions holding random values, and overwrite existing padding with noise."""
    g = torch.Generator().manual_seed(seed)
    n, length, dim = x.shape
    padded = torch.randn(n, length + extra, dim, generator=g) * 5.0
    padded[:, :length][mask] = x[mask]
    padded_mask = torch.cat([mask, torch.zeros(n, extra, dtype=torch.bool)], dim=1)
    return padded, padded_mask


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="divisible"):
        StudentConfig(video_dim=4, text_dim=4, hidden=10, heads=4)
    with pytest.raises(ValueError, match="fusion"):
        StudentConfig(video_dim=4, text_dim=4, fusion=1.5)
    with pytest.raises(ValueError, match="video_dim"):
        StudentConfig(video_dim=0, text_dim=4)


def test_default_config_matches_the_method() -> None:
    cfg = StudentConfig(video_dim=1024, text_dim=768)
    assert (cfg.hidden, cfg.heads, cfg.max_frames, cfg.fusion) == (384, 4, 128, 0.7)


def test_shapes() -> None:
    student = make_student()
    video, video_mask, tokens, token_mask = make_batch()
    branch = student.inheritance
    assert branch.encode_videos(video, video_mask).shape == (3, 5, 16)
    assert branch.encode_queries(tokens, token_mask).shape == (4, 16)
    outputs = student(video, video_mask, tokens, token_mask)
    assert set(outputs) == {"inheritance", "exploration"}
    for out in outputs.values():
        assert isinstance(out, BranchOutput)
        assert out.frame_cos.shape == (4, 3, 5)
        assert out.video_cos.shape == (4, 3)
        assert out.video_dot.shape == (4, 3)
    assert student.scores(video, video_mask, tokens, token_mask).shape == (4, 3)
    assert student.frame_scores(video, video_mask, tokens, token_mask).shape == (4, 3, 5)


def test_init_is_deterministic_given_the_seed() -> None:
    first, second = make_student(seed=7).state_dict(), make_student(seed=7).state_dict()
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_bert_style_initialisation() -> None:
    torch.manual_seed(0)
    branch = Branch(StudentConfig(video_dim=64, text_dim=64, hidden=128, heads=4))
    for module in branch.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            assert abs(module.weight.std().item() - 0.02) < 0.003, module
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))


def test_both_branches_are_the_same_class_with_separate_parameters() -> None:
    student = make_student()
    assert type(student.inheritance) is Branch and type(student.exploration) is Branch
    inheritance_ids = {id(p) for p in student.inheritance.parameters()}
    assert not inheritance_ids & {id(p) for p in student.exploration.parameters()}
    # separately initialised, not two copies of the same weights
    assert not torch.equal(student.inheritance.video_input.linear.weight, student.exploration.video_input.linear.weight)


def test_frame_cosine_and_dot_hand_case() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    frames = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
    expected_dot = torch.tensor([[[1.0, 0.0, 1.0]], [[0.0, 6.0, 3.0]]])
    expected_cos = torch.tensor([[[1.0, 0.0, 1 / math.sqrt(2)]], [[0.0, 1.0, 1 / math.sqrt(2)]]])
    torch.testing.assert_close(frame_dot(queries, frames), expected_dot)
    torch.testing.assert_close(frame_cosine(queries, frames), expected_cos)


def test_max_over_frames_ignores_padded_frames() -> None:
    scores = torch.tensor([[[0.1, 0.9, 0.3], [0.2, 0.4, 5.0]]])  # (Q=1, B=2, T=3)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    torch.testing.assert_close(max_over_frames(scores, mask), torch.tensor([[0.9, 0.4]]))
    # a video with no valid frame can never win
    none_valid = torch.tensor([[True, True, True], [False, False, False]])
    assert max_over_frames(scores, none_valid)[0, 1] == float("-inf")


def test_padded_frames_never_change_valid_outputs() -> None:
    student = make_student()
    video, video_mask, tokens, token_mask = make_batch()
    padded_video, padded_mask = pad_with_noise(video, video_mask, extra=4, seed=3)
    with torch.no_grad():
        for branch in (student.inheritance, student.exploration):
            plain = branch.encode_videos(video, video_mask)
            padded = branch.encode_videos(padded_video, padded_mask)
            torch.testing.assert_close(padded[:, :5][video_mask], plain[video_mask], **TOL)
        for name in ("fused", "inheritance", "exploration"):
            torch.testing.assert_close(
                student.scores(padded_video, padded_mask, tokens, token_mask, name),
                student.scores(video, video_mask, tokens, token_mask, name),
                **TOL,
            )


def test_padded_tokens_never_change_query_vectors() -> None:
    student = make_student()
    video, video_mask, tokens, token_mask = make_batch()
    padded_tokens, padded_mask = pad_with_noise(tokens, token_mask, extra=5, seed=4)
    with torch.no_grad():
        for branch in (student.inheritance, student.exploration):
            torch.testing.assert_close(
                branch.encode_queries(padded_tokens, padded_mask), branch.encode_queries(tokens, token_mask), **TOL
            )
        torch.testing.assert_close(
            student.scores(video, video_mask, padded_tokens, padded_mask),
            student.scores(video, video_mask, tokens, token_mask),
            **TOL,
        )


def test_a_single_valid_token_is_the_pooled_query() -> None:
    """With one valid token the pooling softmax puts all weight on it: the query is that token's state."""
    student = make_student()
    _, _, tokens, token_mask = make_batch()
    branch = student.inheritance
    with torch.no_grad():
        pooled = branch.encode_queries(tokens, token_mask)
        states = branch.query_attention(branch.query_positions(branch.query_input(tokens)), token_mask)
    torch.testing.assert_close(pooled[3], states[3, 0], **TOL)  # query 3 has only token 0 valid


def test_branch_output_is_consistent_with_the_helpers() -> None:
    student = make_student()
    video, video_mask, tokens, token_mask = make_batch()
    branch = student.exploration
    with torch.no_grad():
        out = branch(video, video_mask, tokens, token_mask)
        frames = branch.encode_videos(video, video_mask)
        queries = branch.encode_queries(tokens, token_mask)
    torch.testing.assert_close(out.frame_cos, frame_cosine(queries, frames), **TOL)
    torch.testing.assert_close(out.video_cos, max_over_frames(frame_cosine(queries, frames), video_mask), **TOL)
    torch.testing.assert_close(out.video_dot, max_over_frames(frame_dot(queries, frames), video_mask), **TOL)
    assert out.video_cos.abs().max() <= 1.0 + 1e-6


def test_fused_scores_are_the_weighted_sum_of_branch_scores() -> None:
    student = make_student()
    batch = make_batch()
    with torch.no_grad():
        inheritance = student.scores(*batch, branch="inheritance")
        exploration = student.scores(*batch, branch="exploration")
        fused = student.scores(*batch)
        outputs = student(*batch)
        fused_frames = student.frame_scores(*batch)
    torch.testing.assert_close(fused, 0.7 * inheritance + 0.3 * exploration, **TOL)
    torch.testing.assert_close(inheritance, outputs["inheritance"].video_cos, **TOL)
    torch.testing.assert_close(exploration, outputs["exploration"].video_cos, **TOL)
    expected_frames = 0.7 * outputs["inheritance"].frame_cos + 0.3 * outputs["exploration"].frame_cos
    torch.testing.assert_close(fused_frames, expected_frames, **TOL)
    inheritance_frames = student.frame_scores(*batch, branch="inheritance")
    torch.testing.assert_close(inheritance_frames, outputs["inheritance"].frame_cos, **TOL)


def test_fusion_weight_comes_from_the_config() -> None:
    student = make_student(fusion=0.25)
    batch = make_batch()
    with torch.no_grad():
        inheritance = student.scores(*batch, branch="inheritance")
        exploration = student.scores(*batch, branch="exploration")
        expected = 0.25 * inheritance + 0.75 * exploration
        torch.testing.assert_close(student.scores(*batch), expected, **TOL)


def test_unknown_branch_is_rejected() -> None:
    student = make_student()
    with pytest.raises(ValueError, match="fused"):
        student.scores(*make_batch(), branch="teacher")


def test_encode_once_helpers_score_query_chunks_like_the_full_batch() -> None:
    student = make_student()
    video, video_mask, tokens, token_mask = make_batch()
    with torch.no_grad():
        gallery = student.encode_gallery(video, video_mask)
        assert set(gallery) == {"inheritance", "exploration"}
        for frames in gallery.values():
            assert frames.shape == (3, 5, 16)
            torch.testing.assert_close(frames.norm(dim=-1), torch.ones(3, 5), **TOL)
        for name in ("fused", "inheritance", "exploration"):
            query_chunks = [student.encode_queries(tokens[i : i + 2], token_mask[i : i + 2]) for i in (0, 2)]
            chunked = torch.cat([student.score_encoded(chunk, gallery, video_mask, name) for chunk in query_chunks])
            torch.testing.assert_close(chunked, student.scores(video, video_mask, tokens, token_mask, name), **TOL)
        # a single-branch request only encodes that branch
        assert set(student.encode_gallery(video, video_mask, "exploration")) == {"exploration"}


def test_sequences_longer_than_the_positional_table_are_rejected() -> None:
    student = make_student()
    video = torch.randn(1, 13, VIDEO_DIM)  # max_frames = 12
    with pytest.raises(ValueError, match="exceeds"):
        student.inheritance.encode_videos(video, torch.ones(1, 13, dtype=torch.bool))


def test_fully_padded_inputs_stay_finite() -> None:
    student = make_student()
    video, video_mask, tokens, token_mask = make_batch()
    video_mask = video_mask.clone()
    video_mask[1] = False
    token_mask = token_mask.clone()
    token_mask[2] = False
    with torch.no_grad():
        scores = student.scores(video, video_mask, tokens, token_mask)
    assert torch.isfinite(scores[:, [0, 2]]).all()
    assert (scores[:, 1] == float("-inf")).all()


def test_branches_are_trained_independently() -> None:
    """The exploration loss touches no inheritance parameter, and vice versa."""
    query_video = torch.tensor([0, 1, 2, 0])
    for trained, untouched in (("exploration", "inheritance"), ("inheritance", "exploration")):
        student = make_student()
        student.train()
        outputs = student(*make_batch())
        loss = branch_loss(outputs[trained], query_video, LossWeights(), torch.Generator().manual_seed(0))["total"]
        loss.backward()
        assert all(p.grad is None for p in getattr(student, untouched).parameters())
        grads = [p.grad for p in getattr(student, trained).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads if g is not None)


def test_dropout_is_active_only_in_training() -> None:
    student = make_student(dropout=0.5)
    batch = make_batch()
    with torch.no_grad():
        assert torch.equal(student.scores(*batch), student.scores(*batch))
        student.train()
        assert not torch.equal(student.scores(*batch), student.scores(*batch))


@pytest.mark.parametrize("lanes", [True, False])
def test_packed_training_equals_the_padded_one(lanes: bool) -> None:
    """In training only valid rows go through the per-row layers: the same frame and query vectors
    (within float rounding), the same dropout masks, the same random stream afterwards and the same
    gradients as the padded computation; padded frames come out zero. Both dropout samplers."""
    from models.dropout import Dropout
    from models.student import Branch

    video, video_mask, tokens, token_mask = make_batch()
    frames, queries, grads, after = [], [], [], []
    Dropout.lanes = lanes
    try:
        for packed in (False, True):
            branch = make_student(dropout=0.3).inheritance.train()
            Branch.packed = packed
            torch.manual_seed(5)
            f = branch.encode_videos(video, video_mask)
            q = branch.encode_queries(tokens, token_mask)
            after.append(torch.rand(3))  # the stream after every dropout draw
            (f[video_mask].sum() + q.sum()).backward()
            frames.append(f[video_mask].detach())
            queries.append(q.detach())
            grads.append({name: p.grad.clone() for name, p in branch.named_parameters()})
            if packed:
                assert torch.equal(f[~video_mask], torch.zeros_like(f[~video_mask]))
    finally:
        Branch.packed, Dropout.lanes = True, True
    torch.testing.assert_close(frames[0], frames[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(queries[0], queries[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(after[0], after[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)
    torch.manual_seed(5)
    assert not torch.equal(make_student(dropout=0.3).inheritance.train().encode_videos(video, video_mask)[video_mask],
                           make_student(dropout=0.0).inheritance.train().encode_videos(video, video_mask)[video_mask])


def test_paired_frame_scores_are_each_querys_row_on_its_own_video() -> None:
    """The fusion rule lives in the model: own-video frame scores (moments) fuse as every score does."""
    student = make_student()
    video, video_mask, tokens, token_mask = make_batch()
    own = torch.tensor([0, 2, 1, 2])  # the video of each of the 4 queries
    with torch.inference_mode():
        queries = student.encode_queries(tokens, token_mask)
        frames = student.encode_gallery(video, video_mask)
        for name in ("fused", "inheritance", "exploration"):
            everything = student.frame_scores_encoded(queries, frames, name)  # (Q, B, T)
            paired = student.paired_frame_scores(queries, {k: v[own] for k, v in frames.items()}, name)
            torch.testing.assert_close(paired, everything[torch.arange(4), own], **TOL)
