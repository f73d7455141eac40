"""What the synthetic teacher reads besides captions of stills: sentences of the world's own
language, appearance and action alike, for a next-token objective on its text tower.

Real CLIP's text encoder has read verbs ("a man jumping") even though its image side cannot see
motion in a still; without this, the synthetic teacher's token features would hold the action
words as untrained random vectors and the student, whose query input they are, could not read
half of each query. The sentences come from scenes of their own random streams (no scene of the
evaluation world); the contrastive image-text objective, and so the teacher's zero-shot scores,
still sees appearance only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from synth.captions import query_text
from synth.presets import Preset
from synth.world import plan_scene

_SCENE_STREAM, _TEXT_STREAM = 14, 15  # the teacher's other streams are 10-13


def language_corpus(count: int, preset: Preset, seed: int) -> list[str]:
    """`count` query-like sentences (what an object looks like and what it does), seeded."""
    sentences: list[str] = []
    index = 0
    while len(sentences) < count:
        scene = plan_scene(f"text{index:06d}", "text", preset, np.random.default_rng([seed, _SCENE_STREAM, index]),
                           describe=query_text, text_rng=np.random.default_rng([seed, _TEXT_STREAM, index]))
        sentences += [a.query for a in scene.events() if a.query]
        index += 1
    return sentences[:count]


def corpus_vocabulary(token_ids: torch.Tensor) -> torch.Tensor:
    """Sorted ids of the tokens the corpus uses (padding excluded): the next-token softmax runs over these."""
    ids = torch.unique(token_ids)
    return ids[ids != 0]


def next_token_loss(states: torch.Tensor, token_ids: torch.Tensor, embedding: torch.Tensor,
                    vocabulary: torch.Tensor) -> torch.Tensor:
    """Causal language-model loss with the token embedding tied as output layer.

    states (B, L, W): text transformer outputs; token_ids (B, L); embedding (V, W); vocabulary (K,)
    sorted ids. Each position up to the end-of-text token predicts the next token, over the K words.
    """
    targets = token_ids[:, 1:]
    valid = targets != 0
    logits = states[:, :-1] @ embedding[vocabulary].T  # (B, L-1, K)
    target_index = torch.searchsorted(vocabulary, targets.clamp(min=int(vocabulary[0])))
    return F.cross_entropy(logits[valid], target_index[valid])
