"""DL-DKD training losses, vectorised over the batch's queries and videos.

Shapes: Q queries and B videos per batch; `query_video` (Q,) long holds, for each query, the
index of its positive video in the batch. Every video is expected to have at least one query
(batches are built from videos with all of their queries).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from models.student import BranchOutput

Reduction = Literal["sum", "mean"]


def positive_mask(query_video: Tensor, num_videos: int) -> Tensor:
    """(Q,) positive video index -> (Q, B) bool, True where the video is the query's positive."""
    return F.one_hot(query_video, num_videos).bool()


def _positive_scores(scores: Tensor, query_video: Tensor) -> Tensor:
    return scores.gather(1, query_video.unsqueeze(1)).squeeze(1)


def triplet_ranking_loss(
    video_cos: Tensor,
    query_video: Tensor,
    margin: float = 0.2,
    hard_pool: int = 20,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hinge ranking loss, text->video plus video->text.

    text->video: each query's positive score against ONE negative video drawn uniformly from its
    `hard_pool` highest-scoring in-batch negatives (all B-1 if fewer); mean over queries.
    video->text: each video's mean score over its own queries against its highest-scoring
    negative query; mean over videos. A batch with a single video has no negatives and gives 0.
    """
    num_queries, num_videos = video_cos.shape
    is_positive = positive_mask(query_video, num_videos)
    if num_videos < 2:
        return video_cos.sum() * 0.0  # no negatives; keep the graph so backward still works

    positive = _positive_scores(video_cos, query_video)  # (Q,)
    negatives = video_cos.masked_fill(is_positive, float("-inf"))
    pool = min(hard_pool, num_videos - 1)
    hardest = negatives.topk(pool, dim=1).values  # (Q, pool), all finite: pool <= B - 1
    draw_device = generator.device if generator is not None else video_cos.device
    drawn = torch.randint(pool, (num_queries,), generator=generator, device=draw_device).to(video_cos.device)
    negative = hardest.gather(1, drawn.unsqueeze(1)).squeeze(1)
    text_to_video = (margin - positive + negative).clamp(min=0).mean()

    positive_count = is_positive.sum(0)  # (B,) queries per video
    has_query = positive_count > 0
    mean_positive = (video_cos * is_positive).sum(0) / positive_count.clamp(min=1)
    hardest_negative_query = negatives.amax(0)  # (B,); -inf only when every query is this video's
    video_hinge = (margin - mean_positive + hardest_negative_query).clamp(min=0)
    video_to_text = video_hinge[has_query].mean()
    return text_to_video + video_to_text


def infonce_text_to_video(video_dot: Tensor, query_video: Tensor) -> Tensor:
    """Mean over queries of the cross-entropy of each query over the batch's videos (no temperature)."""
    return F.cross_entropy(video_dot, query_video)


def infonce_video_to_text(video_dot: Tensor, query_video: Tensor) -> Tensor:
    """Mean over videos of -log( sum_{own queries} exp(s) / sum_{all queries} exp(s) )."""
    is_positive = positive_mask(query_video, video_dot.shape[1])
    has_query = is_positive.any(0)
    log_positive = video_dot.masked_fill(~is_positive, float("-inf")).logsumexp(0)  # (B,)
    log_all = video_dot.logsumexp(0)
    return (log_all - log_positive)[has_query].mean()


def infonce_loss(video_dot: Tensor, query_video: Tensor) -> Tensor:
    """InfoNCE on un-normalised scores, no temperature: text->video plus multi-positive video->text."""
    return infonce_text_to_video(video_dot, query_video) + infonce_video_to_text(video_dot, query_video)


def soft_targets_from_scores(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """(Q, B) similarity scores -> (Q, B) detached row-softmax, the DL-DKD++ soft targets."""
    return (scores.detach() / temperature).softmax(dim=1)


def soft_infonce_loss(
    video_dot: Tensor,
    query_video: Tensor,
    soft_targets: Tensor,
    beta: float,
    soft_rows: Tensor | None = None,
    soft_video_targets: Tensor | None = None,
    soft_video_rows: Tensor | None = None,
) -> Tensor:
    """DL-DKD++ InfoNCE with soft targets.

    text->video: cross-entropy of each query's softmax over videos against
    `(1 - beta) * soft_targets + beta * one_hot(positive)`; soft_targets (Q, B), rows summing to 1.
    Rows where `soft_rows` (Q,) bool is False keep the plain one-hot target (the method softens
    only part of the rows).
    video->text: without `soft_video_targets`, the hard multi-positive term of `infonce_loss`.
    With soft_video_targets (B, Q) (rows summing to 1, e.g. `soft_targets_from_scores(sims.T)`),
    each video's positive mass is re-weighted as in the reference code:
    -log( sum_q w_q exp(s_q) / sum_q exp(s_q) ), w = (1 - beta) * soft + beta * [q is its query]
    (the indicator is not normalised, so beta = 1 is exactly the hard term); `soft_video_rows`
    (B,) bool selects the videos this applies to. With beta = 1 the whole loss equals `infonce_loss`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    is_positive = positive_mask(query_video, video_dot.shape[1])
    one_hot = is_positive.to(video_dot.dtype)
    targets = (1.0 - beta) * soft_targets.detach() + beta * one_hot
    if soft_rows is not None:
        targets = torch.where(soft_rows.unsqueeze(1), targets, one_hot)
    text_to_video = -(targets * video_dot.log_softmax(dim=1)).sum(1).mean()
    if soft_video_targets is None:
        return text_to_video + infonce_video_to_text(video_dot, query_video)

    query_weights = (1.0 - beta) * soft_video_targets.detach().T + beta * one_hot  # (Q, B)
    if soft_video_rows is not None:
        query_weights = torch.where(soft_video_rows.unsqueeze(0), query_weights, one_hot)
    has_query = is_positive.any(0)
    # A zero weight drops its query from the numerator; a finite fill instead of log(0) = -inf
    # keeps the backward NaN-free even for a video whose every weight is zero.
    log_weights = query_weights.log().masked_fill(query_weights <= 0, torch.finfo(video_dot.dtype).min)
    log_positive = (log_weights + video_dot).logsumexp(0)
    video_to_text = (video_dot.logsumexp(0) - log_positive)[has_query].mean()
    return text_to_video + video_to_text


def partitioned_soft_infonce(video_dot: Tensor, query_video: Tensor, soft_scores: Tensor, alpha: float,
                             beta: float) -> Tensor:
    """DL-DKD++'s InfoNCE with soft targets on part of the batch, as its reference code splits it.

    The first floor(alpha * Q) queries and floor(alpha * B) videos keep one-hot targets; the rest
    use `(1 - beta) * softmax(soft_scores) + beta * one_hot` (rows of soft_scores for text->video,
    its columns for video->text). Loss = alpha * (hard text->video + hard video->text means)
    + (1 - alpha) * (the soft means); an empty part contributes nothing. Batches are shuffled,
    so "the first" rows are a random share. soft_scores (Q, B): the teacher's scores for the
    inheritance branch, the branch's own (detached) scores for the exploration branch.
    """
    if not (0.0 <= alpha <= 1.0 and 0.0 <= beta <= 1.0):
        raise ValueError(f"alpha and beta must be in [0, 1], got {alpha}, {beta}")
    num_queries, num_videos = video_dot.shape
    one_hot = positive_mask(query_video, num_videos).to(video_dot.dtype)  # (Q, B)
    soft = soft_scores.detach().to(video_dot.dtype)
    hard_q, hard_v = math.floor(alpha * num_queries), math.floor(alpha * num_videos)

    text_targets = one_hot.clone()
    text_targets[hard_q:] = (1.0 - beta) * soft[hard_q:].softmax(dim=1) + beta * one_hot[hard_q:]
    text_to_video = -(text_targets * video_dot.log_softmax(dim=1)).sum(1)  # (Q,)

    video_weights = one_hot.T.clone()  # (B, Q)
    video_weights[hard_v:] = (1.0 - beta) * soft.T[hard_v:].softmax(dim=1) + beta * one_hot.T[hard_v:]
    # A zero weight drops its query from the numerator: a finite fill instead of log(0) keeps
    # the backward free of NaN.
    log_weights = video_weights.log().masked_fill(video_weights <= 0, torch.finfo(video_dot.dtype).min)
    scores_t = video_dot.T  # (B, Q)
    video_to_text = scores_t.logsumexp(1) - (log_weights + scores_t).logsumexp(1)  # (B,)

    loss = video_dot.sum() * 0.0
    if hard_q and hard_v:
        loss = loss + alpha * (text_to_video[:hard_q].mean() + video_to_text[:hard_v].mean())
    if hard_q < num_queries and hard_v < num_videos:
        loss = loss + (1.0 - alpha) * (text_to_video[hard_q:].mean() + video_to_text[hard_v:].mean())
    return loss


def gather_positive(frame_cos: Tensor, query_video: Tensor) -> Tensor:
    """(Q, B, T) frame scores, (Q,) positive index -> (Q, T) scores at each query's positive video."""
    index = query_video.view(-1, 1, 1).expand(-1, 1, frame_cos.shape[2])
    return frame_cos.gather(1, index).squeeze(1)


def _masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    # A finite fill (not -inf) keeps all-padded rows NaN-free; exp underflows to exactly 0 at padding.
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min).log_softmax(dim=1)


def distillation_kl(
    student_frame_cos: Tensor,
    teacher_frame_scores: Tensor,
    frame_mask: Tensor,
    temperature: float = 0.2,
    reduction: Reduction = "sum",
) -> Tensor:
    """KL(softmax(teacher / τ) || softmax(student / τ)) over each query's valid positive-video frames.

    Inputs are (Q, T), already gathered at the positive video (see `gather_positive`); frame_mask
    (Q, T) bool. Padded frames contribute exactly nothing. The teacher is treated as a fixed
    target (detached). reduction "sum" (the method's) sums over queries; "mean" averages over the
    queries that have at least one valid frame.
    """
    if student_frame_cos.shape != teacher_frame_scores.shape or student_frame_cos.shape != frame_mask.shape:
        raise ValueError(
            f"shape mismatch: student {tuple(student_frame_cos.shape)}, teacher {tuple(teacher_frame_scores.shape)}, "
            f"mask {tuple(frame_mask.shape)}"
        )
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    teacher_log = _masked_log_softmax(teacher_frame_scores.detach() / temperature, frame_mask)
    student_log = _masked_log_softmax(student_frame_cos / temperature, frame_mask)
    teacher_log = teacher_log.masked_fill(~frame_mask, 0.0)
    student_log = student_log.masked_fill(~frame_mask, 0.0)
    teacher_prob = teacher_log.exp() * frame_mask
    per_query = (teacher_prob * (teacher_log - student_log)).sum(dim=1)  # (Q,)
    if reduction == "sum":
        return per_query.sum()
    has_frame = frame_mask.any(dim=1)
    return per_query[has_frame].mean()


def multi_teacher_kl(
    student_frame_cos: Tensor,
    teachers_frame_scores: Sequence[Tensor],
    frame_mask: Tensor,
    temperature: float = 0.2,
    reduction: Reduction = "sum",
) -> Tensor:
    """Mean over teachers of `distillation_kl` against each teacher's (Q, T) frame scores."""
    if len(teachers_frame_scores) == 0:
        raise ValueError("multi_teacher_kl needs at least one teacher")
    terms = [distillation_kl(student_frame_cos, t, frame_mask, temperature, reduction) for t in teachers_frame_scores]
    return torch.stack(terms).mean()


@dataclass
class LossWeights:
    """The task losses' settings (the distillation's temperature and weight are passed where used)."""

    infonce: float = 0.04
    triplet_margin: float = 0.2
    hard_pool: int = 20


def branch_loss(
    out: BranchOutput,
    query_video: Tensor,
    weights: LossWeights,
    generator: torch.Generator | None = None,
    soft: tuple[Tensor, float, float] | None = None,
) -> dict[str, Tensor]:
    """One branch's task loss: {"triplet", "infonce", "total" = triplet + weights.infonce * infonce}.
    `soft` = (soft_scores, alpha, beta) makes the InfoNCE DL-DKD++'s `partitioned_soft_infonce`."""
    triplet = triplet_ranking_loss(out.video_cos, query_video, weights.triplet_margin, weights.hard_pool, generator)
    if soft is None:
        infonce = infonce_loss(out.video_dot, query_video)
    else:
        infonce = partitioned_soft_infonce(out.video_dot, query_video, *soft)
    return {"triplet": triplet, "infonce": infonce, "total": triplet + weights.infonce * infonce}
