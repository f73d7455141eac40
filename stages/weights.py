"""Published teacher weights fetched before extraction starts its shards.

An open_clip tag (e.g. `openai`) names a file on the Hugging Face hub or a URL. Fetching it once,
before any shard, puts it in the hub's cache for every later load; on a machine without internet
extraction then fails there, once, with what to do, instead of once per shard and retry.
"""

from __future__ import annotations

import os
from pathlib import Path

from configs.schema import RunConfig
from prvr.errors import UserError


class WeightsUnavailable(UserError, ValueError):
    """A pretrained tag whose weights file cannot be had (offline, no such file)."""


def _download_url(tag_cfg: dict) -> str:
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        model_id, filename = os.path.split(hub)
        return f"https://huggingface.co/{model_id}/resolve/main/{filename or 'open_clip_pytorch_model.bin'}"
    return tag_cfg.get("url", "")


def fetch_pretrained(model: str, pretrained: str | None, folder: Path) -> None:
    """Make sure the weights of `model`/`pretrained` are on this machine: None (random) and local files
    need nothing; a tag is downloaded into the cache unless it is there already. Raises
    WeightsUnavailable, telling the user to put the file under `folder` by hand."""
    import open_clip

    if pretrained is None or model.startswith(("hf-hub:", "local-dir:")) or Path(pretrained).expanduser().is_file():
        return
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag_cfg:
        return  # not a tag: the encoder names the valid tags when it loads
    try:
        open_clip.download_pretrained(tag_cfg)
    except Exception as e:
        reason = str(e).split(". ")[0][:200] or type(e).__name__  # open_clip's first sentence names the file
        # <tag>.bin: the teacher's store key comes from the file's stem, so it stays the tag's.
        put_at = Path(folder) / "weights" / f"{pretrained}.bin"
        raise WeightsUnavailable(
            f"cannot download the weights of teacher {model}/{pretrained} (offline?): {reason}. Download "
            f"{_download_url(tag_cfg) or 'its weights file'} on a machine with internet, put the weights file at "
            f"{put_at} and set extract.teacher.pretrained: {put_at} (model stays {model})") from None


def fetch_teacher_weights(cfg: RunConfig) -> None:
    """The weights of every teacher that extraction loads, each fetched once; raises WeightsUnavailable."""
    for teacher in cfg.extract.teacher:
        fetch_pretrained(teacher.model, teacher.pretrained, cfg.dataset.root)
