"""Decode time-sampled frames of untrimmed videos.

    plan.py            which frames a sampling rate needs, by index (the backends' contract)
    video.py           the decoded video, its output size, the errors, media-files-only checks
    decord_backend.py  the fast path
    ffmpeg_backend.py  the system ffmpeg, for what decord's bundled FFmpeg cannot decode
    backends.py        decord first, ffmpeg when decord cannot (in this process)
    pool.py            worker processes, killed when they overrun a timeout

The names below are the package's interface; the modules' other names are its own.
"""

from stages.decode.backends import Backend, decode_frame_at, decode_video
from stages.decode.plan import SamplePlan, frame_times, plan_samples
from stages.decode.pool import DecodeFailure, DecodePool, DecodeRequest, get_decode_pool
from stages.decode.video import DecodedVideo, DecodeError, output_size

__all__ = [
    "Backend", "DecodeError", "DecodeFailure", "DecodePool", "DecodeRequest", "DecodedVideo", "SamplePlan",
    "decode_frame_at", "decode_video", "frame_times", "get_decode_pool", "output_size", "plan_samples",
]
