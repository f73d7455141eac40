"""The DL-DKD student: two independently parameterised PRVR branches of the same architecture.

Each branch encodes a video into frame vectors and a query into one vector; the branch's score
for a (query, video) pair is the maximum, over the video's valid frames, of the cosine between
the query vector and the frame vector. The inheritance branch is also taught by the teacher
(see models/losses.py), the exploration branch only by the labels; at inference the two
branches' scores are fused as ``fusion * s_inheritance + (1 - fusion) * s_exploration``.

Padding contract: padded frames / tokens (mask False) never change any output for the valid
ones — they are masked as attention keys, in the pooling softmax and in the max over frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dropout import Dropout

_NORM_EPS = 1e-12  # F.normalize's default; zero vectors get cosine 0 instead of NaN

BRANCHES: tuple[str, ...] = ("inheritance", "exploration")
SCORE_BRANCHES: tuple[str, ...] = ("fused", *BRANCHES)


@dataclass(frozen=True)
class StudentConfig:
    video_dim: int
    text_dim: int
    hidden: int = 384
    heads: int = 4
    dropout: float = 0.1
    max_frames: int = 128
    max_tokens: int = 32
    fusion: float = 0.7  # weight of the inheritance branch in the fused score
    init_std: float = 0.02  # std of the normal init of Linear / Embedding weights (reference code's value)

    def __post_init__(self) -> None:
        if self.hidden % self.heads != 0:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}")
        if not 0.0 <= self.fusion <= 1.0:
            raise ValueError(f"fusion must be in [0, 1], got {self.fusion}")
        for name in ("video_dim", "text_dim", "hidden", "heads", "max_frames", "max_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class BranchOutput:
    frame_cos: Tensor  # (Q, B, T) cosine of each query with each frame of each video
    video_cos: Tensor  # (Q, B) max over valid frames of frame_cos
    video_dot: Tensor  # (Q, B) max over valid frames of un-normalised dot products (InfoNCE input)


def _fill_value(dtype: torch.dtype) -> float:
    # Finite rather than -inf so a row with no valid key still gives a finite (ignored) result, and
    # exp(min - max) underflows to exactly 0, so masked entries contribute exactly nothing.
    return torch.finfo(dtype).min


class RowPacking:
    """The valid rows of an (N, L, ...) tensor under an (N, L) mask, as flat row indices: index_select
    and index_copy are cheaper than boolean indexing (which finds the rows again on every call) and
    their gradients are plain gathers and scatters."""

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask
        self.index = mask.reshape(-1).nonzero().squeeze(1)
        self.position = self.index % mask.shape[1]  # each valid row's position in its sequence

    def padded_shape(self, width: int) -> tuple[int, int, int]:
        return (*self.mask.shape, width)

    def gather(self, x: Tensor) -> Tensor:
        """(N, L, C) -> (valid rows, C)"""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.index)

    def scatter(self, rows: Tensor) -> Tensor:
        """(valid rows, C) -> (N, L, C) with the rows where the mask is True and zeros elsewhere."""
        width = rows.shape[-1]
        # in place on fresh zeros: the out-of-place index_copy would first copy the zeros
        return rows.new_zeros(self.mask.numel(), width).index_copy_(0, self.index, rows).view(self.padded_shape(width))


# Each per-frame / per-token layer below has a padded ``forward`` (N, L, C) and, for training, a
# ``rows`` method over only the valid rows (R, C) of such a tensor, R = mask.sum(): at TVR's shape
# more than half of a batch's frames are padding, and on the demo a third of the tokens. Padded rows
# never reach a valid output (the padding contract above), so both give the same valid outputs
# within float rounding, and every dropout draws its mask for the whole padded tensor, so both use
# the same mask on every valid row and leave the random stream alike. Inference keeps the padded
# computation: a matmul's rounding can depend on how many rows it gets, and evaluation, the index
# and a searched sentence must keep scoring exactly alike.


class InputProjection(nn.Module):
    """LayerNorm -> dropout -> Linear(in, hidden) -> ReLU, applied per frame / token."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.dropout = Dropout(dropout)
        self.linear = nn.Linear(in_dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.linear(self.dropout(self.norm(x))))

    def rows(self, x: Tensor, packing: RowPacking) -> Tensor:
        """Padded x (N, L, in) -> (R, hidden) for the valid rows only."""
        return F.relu(self.linear(self.dropout.rows_of(self.norm(packing.gather(x)), packing)))


class LearnedPositions(nn.Module):
    """Adds a learned embedding per position, then LayerNorm and dropout (as in MS-SL's encoder)."""

    def __init__(self, max_len: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def _positions(self, length: int) -> Tensor:
        if length > self.embedding.num_embeddings:
            raise ValueError(f"sequence of {length} positions exceeds the maximum of {self.embedding.num_embeddings}")
        return self.embedding.weight[:length]

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.norm(x + self._positions(x.shape[1]).unsqueeze(0)))

    def rows(self, rows: Tensor, packing: RowPacking) -> Tensor:
        """(R, hidden) valid rows of an (N, L, hidden) tensor -> the same rows with their positions."""
        positions = self._positions(packing.mask.shape[1]).index_select(0, packing.position)
        return self.dropout.rows_of(self.norm(rows + positions), packing)


class AttentionBlock(nn.Module):
    """Multi-head self-attention, output Linear + residual + LayerNorm; no feed-forward sub-layer."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query_key_value = nn.Linear(hidden, 3 * hidden)  # one matmul for the three projections
        self.attention_dropout = Dropout(dropout)
        self.output = nn.Linear(hidden, hidden)
        self.output_dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (N, L, H), mask (N, L) bool with True = valid; padded positions are never attended to."""
        attended = self._attend(self.query_key_value(x), mask)
        return self.norm(x + self.output_dropout(self.output(attended)))

    def rows(self, rows: Tensor, packing: RowPacking) -> Tensor:
        """(R, H) valid rows of an (N, L, H) tensor -> the block's output on those rows. Padded
        positions enter the attention as zeros: they are masked keys, and their own outputs are dropped."""
        qkv = self.query_key_value(rows)
        if self._writes_out(qkv):
            attended = self._attend_rows(qkv, packing)
        else:
            attended = packing.gather(self._attend(packing.scatter(qkv), packing.mask))
        return self.norm(rows + self.output_dropout.rows_of(self.output(attended), packing))

    def _writes_out(self, qkv: Tensor) -> bool:
        # SDPA's CPU kernel falls back to its math path when it drops out weights, and draws the mask
        # with the slow Bernoulli sampler: CPU training writes the same computation out, with a lane mask
        return self.training and self.attention_dropout.p > 0 and self.attention_dropout.uses_lanes(qkv)

    def _key_bias(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """(N, L) mask -> additive bias (heads*N, 1, L) for the written-out attention weights: 0 on valid
        keys, the dtype's minimum on padded ones (exp underflows to exactly 0 there)."""
        n, length = mask.shape
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, _fill_value(dtype))
        return bias.expand(self.heads, n, length).reshape(self.heads * n, 1, length)

    def _written_out(self, q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(d) + bias), dropped out, times v; q, k, v head-major (heads*N, L, d). The
        dropout mask is the one drawn for SDPA's (N, heads, L, L) layout, transposed."""
        weights = torch.baddbmm(key_bias, q, k.transpose(1, 2), alpha=self.head_dim**-0.5).softmax(dim=-1)
        weights = self.attention_dropout.swapped_of(weights.view(self.heads, -1, *weights.shape[1:]), 0, 1)
        return torch.bmm(weights.view(-1, *weights.shape[2:]), v)

    def _attend_rows(self, qkv: Tensor, packing: RowPacking) -> Tensor:
        """(R, 3H) projections of the valid rows -> (R, H) attended values, written out. Scattered
        head-major, so that each of q, k and v is one contiguous (heads*N, L, d) block: no layout copies
        between the projections and the batched matmuls, forward or backward."""
        n, length = packing.mask.shape
        per_head = qkv.view(-1, 3 * self.heads, self.head_dim).transpose(0, 1)  # (3*heads, R, d)
        padded = per_head.new_zeros(3 * self.heads, n * length, self.head_dim).index_copy_(1, packing.index, per_head)
        q, k, v = padded.view(3, self.heads * n, length, self.head_dim).unbind(0)
        attended = self._written_out(q, k, v, self._key_bias(packing.mask, q.dtype))
        attended = attended.view(self.heads, n * length, self.head_dim).index_select(1, packing.index)  # (heads, R, d)
        return attended.transpose(0, 1).reshape(-1, self.heads * self.head_dim)

    def _attend(self, qkv: Tensor, mask: Tensor) -> Tensor:
        """(N, L, 3H) projections -> (N, L, H) attended values."""
        n, length, _ = qkv.shape
        # (N, L, 3H) -> three (N, heads, L, head_dim) views
        q, k, v = qkv.view(n, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self._writes_out(qkv):
            # head-major, as _attend_rows lays them out
            q, k, v = (x.transpose(0, 1).reshape(self.heads * n, length, self.head_dim) for x in (q, k, v))
            attended = self._written_out(q, k, v, self._key_bias(mask, q.dtype))
            attended = attended.view(self.heads, n, length, self.head_dim).transpose(0, 1)
        else:
            # evaluation (and CUDA) keep SDPA: evaluation, the index and a searched sentence must score alike.
            # Additive mask with a finite minimum: exp underflows to exactly 0 for padded keys, and a
            # sequence with no valid key stays finite instead of NaN. Built in q's dtype so that under
            # autocast the minimum is fp16's, not float32's (which would cast to -inf).
            key_bias = torch.zeros(mask.shape, dtype=q.dtype, device=qkv.device).masked_fill(~mask, _fill_value(q.dtype))
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias[:, None, None, :],
                                                      dropout_p=self.attention_dropout.p if self.training else 0.0)
        return attended.transpose(1, 2).reshape(n, length, self.heads * self.head_dim)


class Branch(nn.Module):
    """One PRVR branch: a frame encoder for videos and a pooled encoder for queries."""

    packed = True  # class-wide: training runs the per-row layers on valid rows only (see above)

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video_input = InputProjection(cfg.video_dim, cfg.hidden, cfg.dropout)
        self.video_positions = LearnedPositions(cfg.max_frames, cfg.hidden, cfg.dropout)
        self.video_attention = AttentionBlock(cfg.hidden, cfg.heads, cfg.dropout)
        self.video_output = nn.Linear(cfg.hidden, cfg.hidden)

        self.query_input = InputProjection(cfg.text_dim, cfg.hidden, cfg.dropout)
        self.query_positions = LearnedPositions(cfg.max_tokens, cfg.hidden, cfg.dropout)
        self.query_attention = AttentionBlock(cfg.hidden, cfg.heads, cfg.dropout)
        self.query_pool_score = nn.Linear(cfg.hidden, 1, bias=False)  # a bias cancels in the softmax
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT-style, as in the reference code: PyTorch's default N(0, 1) positional embeddings would
        # swamp the projected features before the LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _packs_rows(self) -> bool:
        return self.training and self.packed

    def encode_videos(self, video: Tensor, video_mask: Tensor) -> Tensor:
        """(B, T, Dv) features, (B, T) bool mask -> (B, T, H) frame vectors (not normalised; in
        packed training, padded frames come out zero)."""
        if self._packs_rows():
            packing = RowPacking(video_mask)
            rows = self.video_positions.rows(self.video_input.rows(video, packing), packing)
            return packing.scatter(self.video_output(self.video_attention.rows(rows, packing)))
        x = self.video_positions(self.video_input(video))
        x = self.video_attention(x, video_mask)
        return self.video_output(x)

    def encode_queries(self, tokens: Tensor, token_mask: Tensor) -> Tensor:
        """(Q, L, Dt) token features, (Q, L) bool mask -> (Q, H) query vectors (not normalised)."""
        if self._packs_rows():
            packing = RowPacking(token_mask)
            rows = self.query_positions.rows(self.query_input.rows(tokens, packing), packing)
            x = packing.scatter(self.query_attention.rows(rows, packing))
        else:
            x = self.query_positions(self.query_input(tokens))
            x = self.query_attention(x, token_mask)
        pool_logits = self.query_pool_score(x).squeeze(-1)  # (Q, L)
        pool_logits = pool_logits.masked_fill(~token_mask, _fill_value(pool_logits.dtype))
        pool_weights = pool_logits.softmax(dim=-1)
        return torch.einsum("ql,qlh->qh", pool_weights, x)

    def forward(self, video: Tensor, video_mask: Tensor, tokens: Tensor, token_mask: Tensor) -> BranchOutput:
        frames = self.encode_videos(video, video_mask)
        queries = self.encode_queries(tokens, token_mask)
        dots = frame_dot(queries, frames)
        # cosine from the same dot products (one (Q,B,T) matmul instead of two)
        norms = queries.norm(dim=-1)[:, None, None] * frames.norm(dim=-1)[None]
        frame_cos = dots / norms.clamp(min=_NORM_EPS)
        return BranchOutput(
            frame_cos=frame_cos,
            video_cos=max_over_frames(frame_cos, video_mask),
            video_dot=max_over_frames(dots, video_mask),
        )


def frame_dot(queries: Tensor, frames: Tensor) -> Tensor:
    """(Q, H) queries, (B, T, H) frames -> (Q, B, T) un-normalised dot products."""
    return torch.einsum("qh,bth->qbt", queries, frames)


def frame_cosine(queries: Tensor, frames: Tensor) -> Tensor:
    """(Q, H) queries, (B, T, H) frames -> (Q, B, T) cosine similarities."""
    return frame_dot(_unit(queries), _unit(frames))


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=_NORM_EPS)


def max_over_frames(frame_scores: Tensor, video_mask: Tensor) -> Tensor:
    """(Q, B, T) scores, (B, T) bool mask -> (Q, B) max over each video's valid frames.

    A video with no valid frame scores -inf (it can never be retrieved).
    """
    return frame_scores.masked_fill(~video_mask.unsqueeze(0), float("-inf")).amax(dim=-1)


def _check_branch(branch: str) -> None:
    if branch not in SCORE_BRANCHES:
        raise ValueError(f"unknown branch {branch!r}; expected one of {SCORE_BRANCHES}")


class DLDKDStudent(nn.Module):
    """Inheritance and exploration branches (same class, separate parameters) with fused scoring."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inheritance = Branch(cfg)
        self.exploration = Branch(cfg)

    def branch(self, name: str) -> Branch:
        if name not in BRANCHES:
            raise ValueError(f"unknown branch {name!r}; expected one of {BRANCHES}")
        return self.inheritance if name == "inheritance" else self.exploration

    def forward(self, video: Tensor, video_mask: Tensor, tokens: Tensor, token_mask: Tensor) -> dict[str, BranchOutput]:
        return {name: self.branch(name)(video, video_mask, tokens, token_mask) for name in BRANCHES}

    def _fuse(self, per_branch: dict[str, Tensor], branch: str) -> Tensor:
        _check_branch(branch)
        if branch != "fused":
            return per_branch[branch]
        return self.cfg.fusion * per_branch["inheritance"] + (1.0 - self.cfg.fusion) * per_branch["exploration"]

    def _needed(self, branch: str) -> tuple[str, ...]:
        _check_branch(branch)
        return BRANCHES if branch == "fused" else (branch,)

    # Encode-once helpers: evaluation encodes the gallery once and scores query chunks against it.
    def encode_gallery(self, video: Tensor, video_mask: Tensor, branch: str = "fused") -> dict[str, Tensor]:
        """-> {branch name: (B, T, H) L2-normalised frame vectors} for the branches `branch` needs."""
        return {name: _unit(self.branch(name).encode_videos(video, video_mask)) for name in self._needed(branch)}

    def encode_queries(self, tokens: Tensor, token_mask: Tensor, branch: str = "fused") -> dict[str, Tensor]:
        """-> {branch name: (Q, H) L2-normalised query vectors} for the branches `branch` needs."""
        return {name: _unit(self.branch(name).encode_queries(tokens, token_mask)) for name in self._needed(branch)}

    def frame_scores_encoded(
        self, query_enc: dict[str, Tensor], video_enc: dict[str, Tensor], branch: str = "fused"
    ) -> Tensor:
        """Normalised encodings from encode_queries / encode_gallery -> (Q, B, T) cosine frame scores."""
        per_branch = {name: frame_dot(query_enc[name], video_enc[name]) for name in self._needed(branch)}
        return self._fuse(per_branch, branch)

    def paired_frame_scores(
        self, query_enc: dict[str, Tensor], frames_enc: dict[str, Tensor], branch: str = "fused"
    ) -> Tensor:
        """Normalised encodings of n queries and of one video each, (n, H) and (n, T, H) per branch
        -> (n, T) cosine frame scores of each query on its own video (fused as the branches' scores are)."""
        per_branch = {name: torch.einsum("nh,nth->nt", query_enc[name], frames_enc[name])
                      for name in self._needed(branch)}
        return self._fuse(per_branch, branch)

    def score_encoded(
        self, query_enc: dict[str, Tensor], video_enc: dict[str, Tensor], video_mask: Tensor, branch: str = "fused"
    ) -> Tensor:
        """Normalised encodings -> (Q, B) video scores.

        Fusion is applied to the per-branch video scores (each branch's own max over frames), as
        the method fuses s_inheritance and s_exploration, not frame scores before the max.
        """
        per_branch = {
            name: max_over_frames(frame_dot(query_enc[name], video_enc[name]), video_mask)
            for name in self._needed(branch)
        }
        return self._fuse(per_branch, branch)

    def scores(
        self, video: Tensor, video_mask: Tensor, tokens: Tensor, token_mask: Tensor, branch: str = "fused"
    ) -> Tensor:
        """(Q, B) video scores of `branch` (fused | inheritance | exploration)."""
        queries = self.encode_queries(tokens, token_mask, branch)
        return self.score_encoded(queries, self.encode_gallery(video, video_mask, branch), video_mask, branch)

    def frame_scores(
        self, video: Tensor, video_mask: Tensor, tokens: Tensor, token_mask: Tensor, branch: str = "fused"
    ) -> Tensor:
        """(Q, B, T) cosine frame scores (fused = weighted sum of the branches'); used for moment localisation.

        Padded frames hold meaningless values; use video_mask to ignore them.
        """
        return self.frame_scores_encoded(
            self.encode_queries(tokens, token_mask, branch), self.encode_gallery(video, video_mask, branch), branch
        )
