"""The synthetic teacher's language: sentences with action words, and the next-word loss on them."""

from __future__ import annotations

import math

import torch

from synth.captions import mentioned_actions
from synth.language import corpus_vocabulary, language_corpus, next_token_loss
from synth.presets import get_preset
from synth.world import plan_world


def test_corpus_speaks_of_actions_and_is_not_the_evaluation_worlds_queries():
    preset = get_preset("small")
    corpus = language_corpus(60, preset, seed=0)
    assert len(corpus) == 60 and corpus == language_corpus(60, preset, seed=0)
    assert sum(bool(mentioned_actions(s)) for s in corpus) == 60
    from synth.captions import query_text

    world = plan_world(20, 0, preset, describe=query_text)
    queries = {a.query for s in world for a in s.events()}
    assert len(set(corpus) & queries) < 5  # short sentences may coincide; the scenes do not


def test_next_token_loss_is_the_cross_entropy_over_the_corpus_words():
    ids = torch.tensor([[5, 7, 9, 0], [5, 9, 0, 0]])
    vocabulary = corpus_vocabulary(ids)
    assert vocabulary.tolist() == [5, 7, 9]
    embedding = torch.zeros(10, 2)
    states = torch.zeros(2, 4, 2)  # all logits 0: uniform over 3 words
    assert math.isclose(float(next_token_loss(states, ids, embedding, vocabulary)), math.log(3), rel_tol=1e-6)
    # A state pointing at the right next word lowers the loss.
    embedding[7] = torch.tensor([5.0, 0.0])
    states[0, 0] = torch.tensor([1.0, 0.0])
    assert float(next_token_loss(states, ids, embedding, vocabulary)) < math.log(3)
