"""Search speed, side by side in one run:

1. On a trained run (default: the demo, when data/demo and its run exist): a query the way
   `prvr search` worked before the index (load the student, read and re-encode the whole gallery
   from the store, load the text encoder, score), a one-shot search on the index (load the
   student and encoder, open the index), and a warm query of a loaded Searcher (text -> tokens
   -> query vector -> every frame -> top K -> moments), all in this process; ratios of the
   medians. Also the `prvr search` command end to end (its own process, imports included).
2. A 10,000-video index of random unit vectors shaped like the demo's (hidden 256, both
   branches, 20-40 frames per video, float16): a warm query's time, with the index's size and
   the process's memory.

Usage: python bench/search.py [--config configs/demo.yaml] [--set runs_dir=/tmp/runs] [--videos 10000]
Prints one JSON object. Nothing is asserted; timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

QUERIES = ["a red star spins", "a small blue circle moves to the left", "a large green square grows",
           "a yellow triangle blinks", "a white ring bounces", "an orange cross sways"]


def memory_mib() -> dict[str, float]:
    """This process's resident memory, MiB (Linux /proc): in all, its own (anonymous) part, the part that
    is mapped files (the index's pages, shared with the page cache), and the peak."""
    names = {"VmRSS": "rss_mib", "RssAnon": "anonymous_mib", "RssFile": "mapped_files_mib", "VmHWM": "peak_rss_mib"}
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in names:
            fields[names[key]] = round(int(value.split()[0]) / 1024, 1)
    return fields


def timed(call, repeats: int) -> tuple[list[float], object]:
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
    return seconds, result


@torch.inference_mode()
def search_by_reencoding(cfg, text: str, top: int = 10) -> list[tuple[str, float]]:
    """The search before the index: everything loaded and the whole gallery encoded on every call."""
    from models.clip import resolve_device
    from stages.data import load_videos
    from stages.search import QueryEncoder
    from stages.trained import load_trained_student
    from storage.features import FeatureStore

    device = resolve_device(cfg.train.device)
    store = FeatureStore(cfg.store)
    model, branch, _ = load_trained_student(cfg, cfg.evaluate.checkpoint, device, store)
    gallery = load_videos(cfg, store.text_splits(), store)
    tokens, mask = QueryEncoder(cfg, device).tokens([text])
    frames = model.encode_gallery(gallery.video.float().to(device), gallery.video_mask.to(device), branch)
    query = model.encode_queries(tokens.to(device), mask.to(device), branch)
    scores = model.score_encoded(query, frames, gallery.video_mask.to(device), branch)[0].float().cpu()
    order = torch.argsort(scores, descending=True)[:top].tolist()
    return [(gallery.video_ids[v], float(scores[v])) for v in order]


def prvr_search_command(config: str, overrides: list[str], text: str, top: int) -> None:
    """`prvr search CONFIG TEXT` as a user runs it (a new process: imports, loading, one query on the index)."""
    import subprocess

    sets = [arg for o in overrides for arg in ("--set", o)]
    subprocess.run([sys.executable, "-c", "from prvr.cli import main; main()", "search", config, text,
                    "--top", str(top), *sets], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def bench_run(config: str, overrides: list[str], top: int) -> dict:
    from configs.schema import load_config
    from stages.index import build_index
    from stages.search import Searcher, search

    cfg = load_config(config, overrides)
    index = build_index(cfg)  # once: what the index stage does after training
    before, _ = timed(lambda: search_by_reencoding(cfg, QUERIES[0], top), 1)  # first call warms caches
    before, old_hits = timed(lambda: search_by_reencoding(cfg, QUERIES[0], top), 3)
    one_shot, _ = timed(lambda: search(cfg, QUERIES[0], top), 3)
    searcher = Searcher.open(cfg)
    try:
        searcher.search(QUERIES[0], top)
        warm = []
        for _ in range(5):
            for text in QUERIES:
                seconds, hits = timed(lambda text=text: searcher.search(text, top), 1)
                warm += seconds
        encode, _ = timed(lambda: searcher.encode(QUERIES[1]), 20)
        new_hits = searcher.search(QUERIES[0], top)
    finally:
        searcher.close()
    command, _ = timed(lambda: prvr_search_command(config, overrides, QUERIES[0], top), 2)
    return {
        "run": cfg.name, "videos": index["videos"], "frames": index["frames"],
        "index_mib": round(index["bytes"] / 2**20, 1), "index_build_s": index["seconds"],
        "reencoding_search_s": round(statistics.median(before), 3),
        "one_shot_search_on_index_s": round(statistics.median(one_shot), 3),
        "prvr_search_command_s": round(statistics.median(command), 2),
        "warm_query_ms": round(1000 * statistics.median(warm), 2),
        "warm_query_p90_ms": round(1000 * float(np.percentile(warm, 90)), 2),
        "text_to_query_vector_ms": round(1000 * statistics.median(encode), 2),
        "ratio_reencoding_over_warm": round(statistics.median(before) / statistics.median(warm), 1),
        "ratio_reencoding_over_one_shot": round(statistics.median(before) / statistics.median(one_shot), 1),
        "same_top_videos": [v for v, _ in old_hits] == [h.video_id for h in new_hits],
        "largest_score_difference": round(max(abs(s - h.score) for (_, s), h in zip(old_hits, new_hits)), 6),
    }


def random_index(folder: Path, videos: int, hidden: int, seed: int = 0):
    """An index shaped like the demo's: both branches, 20-40 frames per video, written chunk by chunk."""
    from storage.index import IndexWriter, open_index

    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 41, videos)
    writer = IndexWriter(folder, ["inheritance", "exploration"], hidden, int(lengths.sum()), videos)
    with writer:
        for start in range(0, videos, 1000):
            chunk = lengths[start:start + 1000]
            vectors = {}
            for branch in writer.branches:
                v = rng.standard_normal((int(chunk.sum()), hidden)).astype(np.float32)
                vectors[branch] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)
            times = np.concatenate([np.arange(n, dtype=np.float32) + 0.5 for n in chunk])
            writer.add(vectors, times, chunk)
        writer.commit("bench", {"splits": ["test"], "selection": "all"}, [f"r{i:05d}" for i in range(videos)],
                      ["test"] * videos, lengths.astype(np.float32))
    return open_index(folder)


def query_random_index(folder: str, hidden: int, top: int, queries: int) -> dict:
    """Open an index and time warm queries, in a process that did nothing else (its memory is the search's)."""
    from models.student import DLDKDStudent, StudentConfig
    from stages.search import FAST_SCORE_ERROR, Searcher
    from storage.index import open_index

    before = memory_mib()
    index = open_index(Path(folder))
    torch.manual_seed(0)
    model = DLDKDStudent(StudentConfig(video_dim=8, text_dim=8, hidden=hidden)).eval()
    searcher = Searcher(model, "fused", index)
    generator = torch.Generator().manual_seed(1)

    def query() -> dict[str, torch.Tensor]:
        q = torch.nn.functional.normalize(torch.randn(2, hidden, generator=generator), dim=-1)
        return {"inheritance": q[:1], "exploration": q[1:]}

    cold, _ = timed(lambda: searcher.rank(query(), top), 1)  # pages the mapped files in
    warm, _ = timed(lambda: searcher.rank(query(), top), queries)
    fast_pass, _ = timed(lambda: searcher.fast_scores(query()), queries)
    candidates = [len(np.flatnonzero(f >= np.partition(f, -top)[-top] - 2 * FAST_SCORE_ERROR))
                  for f in (searcher.fast_scores(query()).numpy() for _ in range(5))]
    searcher.close()
    after = memory_mib()
    added = {k: round(after[k] - before[k], 1) for k in ("anonymous_mib", "mapped_files_mib")}
    return {"first_query_ms": round(1000 * cold[0], 1),
            "warm_query_ms": round(1000 * statistics.median(warm), 2),
            "warm_query_p90_ms": round(1000 * float(np.percentile(warm, 90)), 2),
            "of_which_float16_pass_ms": round(1000 * statistics.median(fast_pass), 2),
            "rescored_candidates_median": int(statistics.median(candidates)),
            "memory_added_by_the_search": added, "memory_before_open": before, "memory_after_queries": after}


def bench_random(videos: int, hidden: int, top: int, queries: int) -> dict:
    import subprocess

    with tempfile.TemporaryDirectory(prefix="prvr-bench-index-") as folder:
        started = time.perf_counter()
        index = random_index(Path(folder), videos, hidden)
        written_s = time.perf_counter() - started
        shape = {"videos": videos, "frames": index.record["frames"], "hidden": hidden, "branches": 2, "top": top,
                 "index_mib": round(index.nbytes / 2**20, 1), "index_write_s": round(written_s, 1)}
        del index
        child = subprocess.run([sys.executable, __file__, "--query-index", folder, "--hidden", str(hidden),
                                "--top", str(top), "--queries", str(queries)],
                               capture_output=True, text=True, check=True)
        return {**shape, **json.loads(child.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--videos", type=int, default=10_000, help="videos of the random index")
    parser.add_argument("--hidden", type=int, default=256, help="frame vector size of the random index (demo: 256)")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--queries", type=int, default=50, help="warm queries timed on the random index")
    parser.add_argument("--query-index", help=argparse.SUPPRESS)  # the child process of bench_random
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.query_index:
        print(json.dumps(query_random_index(args.query_index, args.hidden, args.top, args.queries)))
        return

    from configs.schema import load_config
    from storage.checkpoints import best_checkpoint
    from storage.runs import RunPaths

    out = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "load_average": [round(x, 2) for x in os.getloadavg()]}}
    cfg = load_config(args.config, args.overrides) if Path(args.config).exists() else None
    trained = cfg is not None and best_checkpoint(RunPaths.of(cfg.runs_dir, cfg.name)).exists()
    if trained and Path(cfg.dataset.root).is_dir():
        out["trained_run"] = bench_run(args.config, args.overrides, args.top)
    else:
        out["trained_run"] = f"skipped: no trained run for {args.config} (make demo makes one)"
    out["random_index"] = bench_random(args.videos, args.hidden, args.top, args.queries)
    if isinstance(out["trained_run"], dict):
        full = out["random_index"]["warm_query_ms"] + out["trained_run"]["text_to_query_vector_ms"]
        out["random_index"]["warm_query_with_text_encoding_ms"] = round(full, 2)
    out["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
