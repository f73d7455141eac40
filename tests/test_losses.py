"""DL-DKD losses against hand-computed cases and direct (plain-loop) implementations."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import (
    LossWeights,
    branch_loss,
    distillation_kl,
    gather_positive,
    infonce_loss,
    infonce_text_to_video,
    infonce_video_to_text,
    multi_teacher_kl,
    soft_infonce_loss,
    soft_targets_from_scores,
    triplet_ranking_loss,
)
from models.student import BranchOutput

# 2 videos x 3 queries: queries 0 and 1 belong to video 0, query 2 to video 1.
QUERY_VIDEO = torch.tensor([0, 0, 1])
SCORES = torch.tensor([[0.9, 0.5], [0.4, 0.7], [0.3, 0.8]], dtype=torch.float64)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- direct implementations, one query / video at a time -------------------------------------


def loop_triplet_hardest(scores: list[list[float]], query_video: list[int], margin: float) -> float:
    """Triplet loss with the single hardest negative video (hard_pool = 1)."""
    num_videos = len(scores[0])
    text_to_video = []
    for q, row in enumerate(scores):
        negatives = [row[v] for v in range(num_videos) if v != query_video[q]]
        text_to_video.append(max(0.0, margin - row[query_video[q]] + max(negatives)))
    video_to_text = []
    for v in range(num_videos):
        own = [scores[q][v] for q in range(len(scores)) if query_video[q] == v]
        others = [scores[q][v] for q in range(len(scores)) if query_video[q] != v]
        video_to_text.append(max(0.0, margin - sum(own) / len(own) + max(others)))
    return sum(text_to_video) / len(text_to_video) + sum(video_to_text) / len(video_to_text)


def loop_infonce(scores: list[list[float]], query_video: list[int]) -> tuple[float, float]:
    num_videos = len(scores[0])
    text_to_video = [
        -math.log(math.exp(row[query_video[q]]) / sum(math.exp(s) for s in row)) for q, row in enumerate(scores)
    ]
    video_to_text = []
    for v in range(num_videos):
        column = [scores[q][v] for q in range(len(scores))]
        own = sum(math.exp(scores[q][v]) for q in range(len(scores)) if query_video[q] == v)
        video_to_text.append(-math.log(own / sum(math.exp(s) for s in column)))
    return sum(text_to_video) / len(text_to_video), sum(video_to_text) / len(video_to_text)


def loop_kl(student: list[float], teacher: list[float], temperature: float) -> float:
    def softmax(xs: list[float]) -> list[float]:
        exps = [math.exp(x / temperature) for x in xs]
        return [e / sum(exps) for e in exps]

    p, q = softmax(teacher), softmax(student)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def random_batch(num_videos: int, queries_per_video: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = seeded(seed)
    query_video = torch.repeat_interleave(torch.arange(num_videos), torch.tensor(queries_per_video))
    query_video = query_video[torch.randperm(len(query_video), generator=g)]
    scores = torch.rand(len(query_video), num_videos, generator=g, dtype=torch.float64) * 2 - 1
    return scores, query_video


# ---- triplet ---------------------------------------------------------------------------------


def test_triplet_hand_case() -> None:
    # text->video: q0 max(0, .2-.9+.5)=0, q1 .2-.4+.7=.5, q2 max(0, .2-.8+.3)=0      -> .5/3
    # video->text: v0 mean(.9,.4)=.65 vs hardest other query .3 -> max(0,.2-.65+.3)=0
    #              v1 .8 vs max(.5,.7)=.7 -> .2-.8+.7=.1                            -> .1/2
    loss = triplet_ranking_loss(SCORES, QUERY_VIDEO, margin=0.2, hard_pool=20, generator=seeded(0))
    assert loss.item() == pytest.approx(0.5 / 3 + 0.1 / 2)


def test_triplet_matches_the_loop_with_the_hardest_negative() -> None:
    scores, query_video = random_batch(6, [1, 3, 2, 1, 4, 2], seed=5)
    loss = triplet_ranking_loss(scores, query_video, margin=0.3, hard_pool=1)
    assert loss.item() == pytest.approx(loop_triplet_hardest(scores.tolist(), query_video.tolist(), 0.3))


def draw_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """5 videos, one query each. Query 0's negatives score .8 > .6 > .1 > -.5; every other query's
    negatives all score 0, so only query 0's draw can change the loss."""
    scores = torch.zeros(5, 5, dtype=torch.float64)
    scores.fill_diagonal_(0.9)
    scores[0] = torch.tensor([0.9, 0.8, 0.6, 0.1, -0.5], dtype=torch.float64)
    return scores, torch.arange(5)


def drawn_negatives_of_query_0(hard_pool: int, seeds: range) -> list[float]:
    # A large margin keeps every hinge active, so loss(draw) - loss(hardest) = (drawn - .8) / 5 queries.
    scores, query_video = draw_batch()
    margin = 5.0
    hardest = triplet_ranking_loss(scores, query_video, margin, hard_pool=1)
    return [
        round(0.8 + 5 * (triplet_ranking_loss(scores, query_video, margin, hard_pool, seeded(s)) - hardest).item(), 9)
        for s in seeds
    ]


def test_triplet_draws_uniformly_from_the_hard_pool_only() -> None:
    drawn = drawn_negatives_of_query_0(hard_pool=2, seeds=range(400))
    assert set(drawn) == {0.8, 0.6}
    assert 140 < drawn.count(0.8) < 260  # fixed seeds: deterministic, ~200 expected


def test_triplet_pool_shrinks_to_the_available_negatives() -> None:
    assert set(drawn_negatives_of_query_0(hard_pool=20, seeds=range(200))) == {0.8, 0.6, 0.1, -0.5}


def test_triplet_draw_is_reproducible_with_a_seeded_generator() -> None:
    scores, query_video = random_batch(8, [2] * 8, seed=2)
    losses = [triplet_ranking_loss(scores, query_video, 0.2, 3, seeded(11)) for _ in range(3)]
    assert losses[0].item() == losses[1].item() == losses[2].item()
    other_seeds = {triplet_ranking_loss(scores, query_video, 0.2, 3, seeded(s)).item() for s in range(20)}
    assert len(other_seeds) > 1  # the generator, not a fixed choice, decides


def test_triplet_single_video_batch_is_zero_and_differentiable() -> None:
    scores = torch.tensor([[0.3], [0.5]], requires_grad=True)
    loss = triplet_ranking_loss(scores, torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(scores.grad, torch.zeros(2, 1))


def test_triplet_gradients_reach_only_the_used_scores() -> None:
    scores = SCORES.clone().requires_grad_(True)
    triplet_ranking_loss(scores, QUERY_VIDEO, 0.2, 20, seeded(0)).backward()
    # active hinges: q1 (text->video, /3 queries: -1 on its positive, +1 on its negative) and
    # v1 (video->text, /2 videos: -1 on q2's positive, +1 on the hardest other query, q1 at video 1)
    expected = torch.tensor([[0.0, 0.0], [-1 / 3, 1 / 3 + 1 / 2], [0.0, -1 / 2]], dtype=torch.float64)
    torch.testing.assert_close(scores.grad, expected)


# ---- InfoNCE ---------------------------------------------------------------------------------


def test_infonce_hand_case() -> None:
    e = math.exp
    # text->video: cross-entropy of each query's row
    # query 1's positive is video 0 (score .4 against .7)
    t2v = (
        -math.log(e(0.9) / (e(0.9) + e(0.5)))
        - math.log(e(0.4) / (e(0.4) + e(0.7)))
        - math.log(e(0.8) / (e(0.3) + e(0.8)))
    ) / 3
    # video->text: video 0 owns q0 and q1 (scores .9, .4; q2 scores .3); video 1 owns q2 (.8; others .5, .7)
    v2t = (
        -math.log((e(0.9) + e(0.4)) / (e(0.9) + e(0.4) + e(0.3)))
        - math.log(e(0.8) / (e(0.5) + e(0.7) + e(0.8)))
    ) / 2
    assert infonce_text_to_video(SCORES, QUERY_VIDEO).item() == pytest.approx(t2v)
    assert infonce_video_to_text(SCORES, QUERY_VIDEO).item() == pytest.approx(v2t)
    assert infonce_loss(SCORES, QUERY_VIDEO).item() == pytest.approx(t2v + v2t)


def test_infonce_matches_the_loop_on_unnormalised_scores() -> None:
    scores, query_video = random_batch(5, [3, 1, 2, 4, 1], seed=8)
    scores = scores * 12.0  # dot products, far outside [-1, 1]
    t2v, v2t = loop_infonce(scores.tolist(), query_video.tolist())
    assert infonce_text_to_video(scores, query_video).item() == pytest.approx(t2v)
    assert infonce_loss(scores, query_video).item() == pytest.approx(t2v + v2t)


def test_soft_infonce_with_beta_one_is_infonce() -> None:
    scores, query_video = random_batch(4, [2, 3, 1, 2], seed=9)
    soft = soft_targets_from_scores(torch.rand(8, 4, generator=seeded(1), dtype=torch.float64))
    loss = soft_infonce_loss(scores, query_video, soft, beta=1.0)
    assert loss.item() == pytest.approx(infonce_loss(scores, query_video).item())
    text_to_video = loss - infonce_video_to_text(scores, query_video)
    assert text_to_video.item() == pytest.approx(infonce_text_to_video(scores, query_video).item())


def test_soft_infonce_hand_case() -> None:
    # text->video target for each row: (1 - beta) * soft + beta * one_hot
    beta = 0.25
    soft = torch.tensor([[0.5, 0.5], [0.2, 0.8], [1.0, 0.0]], dtype=torch.float64)
    expected_t2v = 0.0
    for q, row in enumerate(SCORES.tolist()):
        log_z = math.log(sum(math.exp(s) for s in row))
        target = [(1 - beta) * soft[q, v].item() + beta * (v == QUERY_VIDEO[q].item()) for v in range(2)]
        expected_t2v += -sum(t * (s - log_z) for t, s in zip(target, row)) / 3
    loss = soft_infonce_loss(SCORES, QUERY_VIDEO, soft, beta)
    assert (loss - infonce_video_to_text(SCORES, QUERY_VIDEO)).item() == pytest.approx(expected_t2v)
    # rows outside soft_rows keep the one-hot target: with no soft rows it is plain InfoNCE
    no_rows = torch.zeros(3, dtype=torch.bool)
    plain = infonce_loss(SCORES, QUERY_VIDEO).item()
    assert soft_infonce_loss(SCORES, QUERY_VIDEO, soft, beta, no_rows).item() == pytest.approx(plain)
    all_rows = torch.ones(3, dtype=torch.bool)
    assert soft_infonce_loss(SCORES, QUERY_VIDEO, soft, beta, all_rows).item() == pytest.approx(loss.item())


def test_soft_targets_are_detached_row_softmaxes() -> None:
    sims = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    targets = soft_targets_from_scores(sims)
    torch.testing.assert_close(targets, torch.tensor([[0.25, 0.75]]))
    assert not targets.requires_grad


def test_soft_infonce_rejects_beta_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="beta"):
        soft_infonce_loss(SCORES, QUERY_VIDEO, torch.full((3, 2), 0.5, dtype=torch.float64), beta=1.5)


# ---- distillation ----------------------------------------------------------------------------


def test_gather_positive_hand_case() -> None:
    frame_cos = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # (Q=2, B=3, T=4)
    gathered = gather_positive(frame_cos, torch.tensor([2, 0]))
    torch.testing.assert_close(gathered, torch.tensor([[8.0, 9.0, 10.0, 11.0], [12.0, 13.0, 14.0, 15.0]]))


def test_distillation_kl_hand_case() -> None:
    # query 0: 2 valid frames; query 1: 3 valid frames
    student = torch.tensor([[0.1, 0.3, 0.0], [0.5, -0.2, 0.4]], dtype=torch.float64)
    teacher = torch.tensor([[0.2, 0.25, 0.0], [0.1, 0.3, 0.2]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # query 0 by hand at tau = .2: teacher logits (1, 1.25), student logits (.5, 1.5)
    p = [math.exp(1.0) / (math.exp(1.0) + math.exp(1.25)), math.exp(1.25) / (math.exp(1.0) + math.exp(1.25))]
    q = [math.exp(0.5) / (math.exp(0.5) + math.exp(1.5)), math.exp(1.5) / (math.exp(0.5) + math.exp(1.5))]
    kl_0 = p[0] * math.log(p[0] / q[0]) + p[1] * math.log(p[1] / q[1])
    assert kl_0 == pytest.approx(loop_kl([0.1, 0.3], [0.2, 0.25], 0.2))
    kl_1 = loop_kl(student[1].tolist(), teacher[1].tolist(), 0.2)
    assert distillation_kl(student, teacher, mask).item() == pytest.approx(kl_0 + kl_1)
    assert distillation_kl(student, teacher, mask, reduction="mean").item() == pytest.approx((kl_0 + kl_1) / 2)
    at_unit_temperature = loop_kl([0.1, 0.3], [0.2, 0.25], 1.0) + loop_kl(student[1].tolist(), teacher[1].tolist(), 1.0)
    assert distillation_kl(student, teacher, mask, temperature=1.0).item() == pytest.approx(at_unit_temperature)


def test_distillation_kl_is_zero_for_identical_scores_and_positive_otherwise() -> None:
    g = seeded(3)
    scores = torch.rand(4, 6, generator=g) * 2 - 1
    mask = torch.rand(4, 6, generator=g) > 0.3
    mask[:, 0] = True
    same_valid_frames = torch.where(mask, scores, torch.randn(4, 6, generator=g))  # padding differs
    assert distillation_kl(scores, same_valid_frames, mask).item() == pytest.approx(0.0, abs=1e-6)
    other = scores + 0.3 * torch.randn(4, 6, generator=g)
    assert distillation_kl(other, scores, mask).item() > 1e-3


def test_distillation_kl_ignores_padded_frames() -> None:
    g = seeded(4)
    student, teacher = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]], dtype=torch.bool)
    base = distillation_kl(student, teacher, mask)
    noisy_student = torch.where(mask, student, torch.randn(3, 5, generator=g) * 10)
    noisy_teacher = torch.where(mask, teacher, torch.randn(3, 5, generator=g) * 10)
    assert distillation_kl(noisy_student, noisy_teacher, mask).item() == pytest.approx(base.item(), rel=1e-6)
    expected = sum(loop_kl(student[i][mask[i]].tolist(), teacher[i][mask[i]].tolist(), 0.2) for i in range(3))
    assert base.item() == pytest.approx(expected, rel=1e-5)
    # extra padded columns change nothing either
    wider = distillation_kl(
        torch.cat([student, torch.randn(3, 4, generator=g)], 1),
        torch.cat([teacher, torch.randn(3, 4, generator=g)], 1),
        torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1),
    )
    assert wider.item() == pytest.approx(base.item(), rel=1e-6)


def test_distillation_kl_gradient_reaches_only_the_valid_student_frames() -> None:
    g = seeded(5)
    student = torch.randn(2, 4, generator=g).requires_grad_(True)
    teacher = torch.randn(2, 4, generator=g).requires_grad_(True)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])  # query 1 fully padded
    loss = distillation_kl(student, teacher, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert teacher.grad is None  # the teacher is a fixed target
    assert torch.isfinite(student.grad).all()
    assert torch.equal(student.grad[~mask], torch.zeros(int((~mask).sum())))
    assert student.grad[0, :2].abs().sum() > 0
    # the fully padded query contributes nothing and is left out of the mean
    assert distillation_kl(student, teacher, mask, reduction="mean").item() == pytest.approx(loss.item())


def test_multi_teacher_kl_averages_the_teachers() -> None:
    g = seeded(6)
    student, first, second = (torch.randn(3, 4, generator=g) for _ in range(3))
    mask = torch.ones(3, 4, dtype=torch.bool)
    expected = (distillation_kl(student, first, mask) + distillation_kl(student, second, mask)) / 2
    torch.testing.assert_close(multi_teacher_kl(student, [first, second], mask), expected)
    torch.testing.assert_close(multi_teacher_kl(student, [first], mask), distillation_kl(student, first, mask))
    with pytest.raises(ValueError):
        multi_teacher_kl(student, [], mask)


def test_distillation_kl_rejects_mismatched_shapes_and_reductions() -> None:
    with pytest.raises(ValueError, match="shape"):
        distillation_kl(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        all_valid = torch.ones(2, 3, dtype=torch.bool)
        distillation_kl(torch.zeros(2, 3), torch.zeros(2, 3), all_valid, reduction="max")  # type: ignore[arg-type]


# ---- per-branch total ------------------------------------------------------------------------


def test_branch_loss_combines_triplet_and_weighted_infonce() -> None:
    dots = SCORES * 7.0
    out = BranchOutput(frame_cos=SCORES.unsqueeze(-1), video_cos=SCORES, video_dot=dots)
    weights = LossWeights()
    defaults = (weights.infonce, weights.triplet_margin, weights.hard_pool)
    assert defaults == (0.04, 0.2, 20)
    losses = branch_loss(out, QUERY_VIDEO, weights, seeded(0))
    assert set(losses) == {"triplet", "infonce", "total"}
    assert losses["triplet"].item() == pytest.approx(0.5 / 3 + 0.1 / 2)
    assert losses["infonce"].item() == pytest.approx(infonce_loss(dots, QUERY_VIDEO).item())
    assert losses["total"].item() == pytest.approx(losses["triplet"].item() + 0.04 * losses["infonce"].item())


def loop_soft_video_to_text(
    scores: list[list[float]], query_video: list[int], soft_video: list[list[float]], beta: float
) -> float:
    """Reference-code form: -log( sum_q w_q exp(s_q) / sum_q exp(s_q) ) per video, w = (1-beta) soft + beta [own]."""
    terms = []
    for v in range(len(scores[0])):
        weights = [(1 - beta) * soft_video[v][q] + beta * (query_video[q] == v) for q in range(len(scores))]
        numerator = sum(w * math.exp(scores[q][v]) for q, w in enumerate(weights))
        terms.append(-math.log(numerator / sum(math.exp(scores[q][v]) for q in range(len(scores)))))
    return sum(terms) / len(terms)


def test_soft_infonce_video_to_text_with_soft_video_targets() -> None:
    scores, query_video = random_batch(3, [2, 1, 2], seed=12)
    sims = torch.rand(5, 3, generator=seeded(2), dtype=torch.float64)
    soft_text, soft_video = soft_targets_from_scores(sims), soft_targets_from_scores(sims.T)
    beta = 0.8
    loss = soft_infonce_loss(scores, query_video, soft_text, beta, soft_video_targets=soft_video)
    text_to_video = soft_infonce_loss(scores, query_video, soft_text, beta) - infonce_video_to_text(scores, query_video)
    expected = loop_soft_video_to_text(scores.tolist(), query_video.tolist(), soft_video.tolist(), beta)
    assert (loss - text_to_video).item() == pytest.approx(expected)
    # beta = 1 leaves only the hard multi-positive term
    hard = soft_infonce_loss(scores, query_video, soft_text, 1.0, soft_video_targets=soft_video)
    assert hard.item() == pytest.approx(infonce_loss(scores, query_video).item())
    # videos outside soft_video_rows keep the hard term
    none_soft = torch.zeros(3, dtype=torch.bool)
    kept_hard = soft_infonce_loss(
        scores, query_video, soft_text, beta, soft_video_targets=soft_video, soft_video_rows=none_soft
    )
    assert kept_hard.item() == pytest.approx(text_to_video.item() + infonce_video_to_text(scores, query_video).item())


def test_soft_infonce_gradients_are_finite_with_zero_weights() -> None:
    scores = (SCORES * 10).clone().requires_grad_(True)
    soft_video = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # zeros on purpose
    soft_text = torch.full((3, 2), 0.5, dtype=torch.float64)
    loss = soft_infonce_loss(scores, QUERY_VIDEO, soft_text, 0.5, soft_video_targets=soft_video)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()


# ---- DL-DKD++ partitioned soft InfoNCE -------------------------------------------------------
def _per_row_plain(scores: torch.Tensor, query_video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t2v = torch.nn.functional.cross_entropy(scores, query_video, reduction="none")
    pos = torch.nn.functional.one_hot(query_video, scores.shape[1]).bool()
    v2t = scores.logsumexp(0) - scores.masked_fill(~pos, float("-inf")).logsumexp(0)
    return t2v, v2t


def test_partitioned_soft_infonce_reduces_to_infonce() -> None:
    from models.losses import infonce_loss, partitioned_soft_infonce

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 3, generator=g) * 3
    query_video = torch.tensor([0, 0, 1, 1, 2, 2])
    soft = torch.randn(6, 3, generator=g) * 5
    plain = infonce_loss(scores, query_video)
    assert partitioned_soft_infonce(scores, query_video, soft, 1.0, 0.3).item() == pytest.approx(plain.item())
    assert partitioned_soft_infonce(scores, query_video, soft, 0.0, 1.0).item() == pytest.approx(plain.item(), rel=1e-5)
    # beta = 1 with a split: alpha-weighted means of the plain per-row terms (rows 0-2 / videos 0 hard)
    t2v, v2t = _per_row_plain(scores, query_video)
    want = 0.5 * (t2v[:3].mean() + v2t[:1].mean()) + 0.5 * (t2v[3:].mean() + v2t[1:].mean())
    assert partitioned_soft_infonce(scores, query_video, soft, 0.5, 1.0).item() == pytest.approx(want.item(), rel=1e-5)


def test_partitioned_soft_infonce_hand_case() -> None:
    from models.losses import partitioned_soft_infonce

    scores = torch.tensor([[2.0, 0.0], [0.5, 1.0]])
    query_video = torch.tensor([0, 1])
    soft = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    alpha, beta = 0.5, 0.6  # query 0 and video 0 hard; query 1 and video 1 soft
    t2v_hard = -torch.log_softmax(scores[0], 0)[0]
    target = 0.4 * torch.softmax(soft[1], 0) + 0.6 * torch.tensor([0.0, 1.0])
    t2v_soft = -(target * torch.log_softmax(scores[1], 0)).sum()
    v2t_hard = scores[:, 0].logsumexp(0) - scores[0, 0]
    w = 0.4 * torch.softmax(soft[:, 1], 0) + 0.6 * torch.tensor([0.0, 1.0])
    v2t_soft = scores[:, 1].logsumexp(0) - (w.log() + scores[:, 1]).logsumexp(0)
    want = alpha * (t2v_hard + v2t_hard) + (1 - alpha) * (t2v_soft + v2t_soft)
    got = partitioned_soft_infonce(scores, query_video, soft, alpha, beta)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_partitioned_soft_infonce_gradients_are_finite_and_skip_the_targets() -> None:
    from models.losses import partitioned_soft_infonce

    scores = torch.randn(5, 3, requires_grad=True)
    soft = torch.randn(5, 3, requires_grad=True)
    loss = partitioned_soft_infonce(scores, torch.tensor([0, 1, 1, 2, 2]), soft, 0.4, 0.8)
    loss.backward()
    assert torch.isfinite(scores.grad).all() and soft.grad is None
    with pytest.raises(ValueError, match="alpha and beta"):
        partitioned_soft_infonce(scores, torch.tensor([0, 1, 1, 2, 2]), soft, 1.2, 0.5)
