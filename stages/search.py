"""Free-text search over the stored videos with a trained student: ranked videos and moments."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from configs.schema import RunConfig
from stages.data import load_videos
from stages.extract import token_model
from storage.features import FeatureStore


@dataclass(frozen=True)
class Hit:
    rank: int
    video_id: str
    score: float
    moment: tuple[float, float]


@torch.inference_mode()
def search(cfg: RunConfig, text: str, top: int = 10, splits: list[str] | None = None) -> list[Hit]:
    from models.clip import load_clip_encoder, resolve_device
    from stages.evaluate import own_video_frame_scores
    from stages.moments import predict_moment
    from stages.trained import load_trained_student
    from stages.weights import fetch_pretrained

    if not text.strip():
        raise ValueError("the query text is empty")
    if cfg.dataset.release is not None:
        raise ValueError(f"free-text search needs the model that made the student's token features; the release "
                         f"ships {cfg.dataset.release.text} features of its own queries only. Search works on "
                         f"stores extracted from raw videos (prvr import tvr|activitynet|charades, then prvr run).")
    device = resolve_device(cfg.train.device)
    store = FeatureStore(cfg.store)
    model, branch, _ = load_trained_student(cfg, cfg.evaluate.checkpoint, device, store)  # best unless set
    gallery = load_videos(cfg, splits or store.text_splits(), store)
    teacher = next(t for t in cfg.extract.teacher if t.key == token_model(cfg.extract))
    fetch_pretrained(teacher.model, teacher.pretrained, cfg.dataset.root)
    encoder = load_clip_encoder(teacher.model, teacher.pretrained, device, cfg.extract.seed)
    # The same token budget extraction used for the stored queries.
    tokens, lengths = encoder.encode_tokens([text], max_tokens=min(cfg.extract.max_tokens, encoder.context_length))
    # The same float16 rounding the stored training tokens went through.
    tokens = tokens.to(torch.float16).float().to(device)
    token_mask = (torch.arange(tokens.shape[1]) < lengths[:, None]).to(device)
    frames = model.encode_gallery(gallery.video.float().to(device), gallery.video_mask.to(device))
    query = model.encode_queries(tokens, token_mask)
    scores = model.score_encoded(query, frames, gallery.video_mask.to(device), branch)[0].float().cpu()
    order = torch.argsort(scores, descending=True)[:top].tolist()
    hits = []
    for rank, v in enumerate(order, 1):
        n = int(gallery.video_mask[v].sum())
        per_frame = own_video_frame_scores(model, query, {k: f[v:v + 1] for k, f in frames.items()}, branch)[0, :n]
        moment = predict_moment(per_frame.float().cpu().numpy(), gallery.times[v, :n].numpy(), float(gallery.durations[v]))
        hits.append(Hit(rank, gallery.video_ids[v], float(scores[v]), (float(moment[0]), float(moment[1]))))
    return hits
