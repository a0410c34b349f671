"""`make bench` (dense part, `python -m eval.bench.dense [--full]`): encoder throughput and FAISS indexes.

- Encoder throughput: WenTian titles per second through the base model
  (``passage: `` prefix, max length from ``configs/wentian.yaml``), on this
  machine's CPU, and on the GPU in fp16 when one is present.
- FAISS: ``Flat`` against ``HNSW32`` and ``IVF4096,PQ32`` (with and without
  an exact re-ranking of its shortlist, ``RFlat``), over vectors drawn around
  the real WenTian title embeddings (a real embedding plus small Gaussian
  noise, renormalized), searched one query at a time with real Taobao query
  embeddings on 2 threads: build time, size, latency p50/p99 and recall@10
  against ``Flat``.  100,000 vectors by default, 1,000,000 with ``--full``.
  With faiss-gpu and a CUDA device, GPU search latency too.

Embeddings are cached under ``indexes/bench/`` (rebuilt when the model changes).
Writes ``reports/bench/dense.json`` and prints a table.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from eval.bench.bm25 import read_id_text
from core.cli import command

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "datasets"


def embeddings(encoder, texts: list[str], kind: str, cache: Path) -> np.ndarray:
    path = cache / f"{kind}-{encoder.fingerprint}-{len(texts)}.npy"
    if path.is_file():
        return np.load(path)
    enc = encoder.encode_queries if kind == "queries" else encoder.encode_passages
    vecs = enc(texts, progress=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def encoder_throughput(encoder, texts: list[str], queries: list[str]) -> dict:
    """Titles per second in batches, and single-query encoding latency (what a search waits for)."""
    encoder.encode_passages(texts[:64])  # warm-up
    t0 = time.perf_counter()
    encoder.encode_passages(texts)
    s = time.perf_counter() - t0
    lat = []
    for q in queries[:200]:
        t1 = time.perf_counter()
        encoder.encode_queries([q])
        lat.append((time.perf_counter() - t1) * 1000)
    return {
        "device": encoder.device,
        "titles": len(texts),
        "seconds": round(s, 2),
        "titles_per_second": round(len(texts) / s, 1),
        "max_length": encoder.max_length,
        "batch_size": encoder.batch_size,
        "query_encode_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "query_encode_p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


def synthetic_vectors(base: np.ndarray, n: int, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        v = base[rng.integers(0, len(base), m)] + rng.normal(0, sigma, (m, base.shape[1])).astype(np.float32)
        out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def neighbourhood(base: np.ndarray, sigma: float, sample: int = 2000) -> dict:
    """How close real titles are to each other, and synthetic copies to their source (cosines)."""
    rng = np.random.default_rng(1)
    idx = rng.choice(len(base), min(sample, len(base)), replace=False)
    sims = base[idx] @ base.T
    sims[np.arange(len(idx)), idx] = -1
    nn1 = sims.max(axis=1)
    copies = base[idx] + rng.normal(0, sigma, (len(idx), base.shape[1])).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    to_source = (copies * base[idx]).sum(axis=1)
    return {
        "real_nn1_cos_p10_p50_p90": np.percentile(nn1, [10, 50, 90]).round(3).tolist(),
        "copy_to_source_cos_mean": round(float(to_source.mean()), 3),
        "sigma": sigma,
    }


def time_single_queries(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    for q in queries[:10]:
        index.search(q[None], k)
    lat = np.empty(len(queries))
    ids = np.empty((len(queries), k), dtype=np.int64)
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        _, I = index.search(q[None], k)
        lat[i] = (time.perf_counter() - t0) * 1000
        ids[i] = I[0]
    return lat, ids


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def bench_faiss(vectors: np.ndarray, queries: np.ndarray, k: int = 10, gpu: bool = False) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(2)
    d = vectors.shape[1]
    n = len(vectors)
    nlist = 4096 if n >= 200_000 else 1024
    configs = [
        ("Flat", {}),
        ("HNSW32", {"efSearch": 128}),
        ("HNSW32", {"efSearch": 512}),
        ("HNSW32", {"efSearch": 1024}),
        (f"IVF{nlist},Flat", {"nprobe": 32}),
        (f"IVF{nlist},Flat", {"nprobe": 128}),
        (f"IVF{nlist},PQ32", {"nprobe": 32}),
        (f"IVF{nlist},PQ32,RFlat", {"nprobe": 64, "k_factor": 8}),
    ]
    rows, built, truth, flat_p50 = [], {}, None, None
    for factory, params in configs:
        if factory not in built:
            t0 = time.perf_counter()
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
            if not index.is_trained:
                train = vectors[np.random.default_rng(0).choice(n, min(n, nlist * 40), replace=False)]
                index.train(train)
            index.add(vectors)
            built[factory] = (index, time.perf_counter() - t0, len(faiss.serialize_index(index)))
            print(f"  built {factory} in {built[factory][1]:.1f} s", flush=True)
        index, build_s, size = built[factory]
        if "efSearch" in params:
            index.hnsw.efSearch = params["efSearch"]
        if "nprobe" in params:
            faiss.extract_index_ivf(index).nprobe = params["nprobe"]
        if "k_factor" in params:
            faiss.downcast_index(index).k_factor = params["k_factor"]
        lat, ids = time_single_queries(index, queries, k)
        if truth is None:
            truth, flat_p50 = ids, float(np.percentile(lat, 50))
        p50 = float(np.percentile(lat, 50))
        rows.append(
            {
                "device": "cpu",
                "n_vectors": n,
                "factory": factory,
                "params": params,
                "build_s": round(build_s, 1),
                "size_mb": round(size / 2**20, 1),
                "p50_ms": round(p50, 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                "recall@10": round(recall_at(ids, truth, k), 4),
                "speedup_vs_flat": round(flat_p50 / p50, 1),
            }
        )
        print("   ", json.dumps(rows[-1]), flush=True)
    if gpu:
        for factory in ("Flat", f"IVF{nlist},PQ32"):
            gi = faiss.index_cpu_to_all_gpus(built[factory][0])
            if "IVF" in factory:
                faiss.GpuParameterSpace().set_index_parameter(gi, "nprobe", 32)
            lat, ids = time_single_queries(gi, queries, k)
            rows.append(
                {
                    "device": "gpu",
                    "n_vectors": n,
                    "factory": factory,
                    "p50_ms": round(float(np.percentile(lat, 50)), 3),
                    "p99_ms": round(float(np.percentile(lat, 99)), 3),
                    "recall@10": round(recall_at(ids, truth, k), 4),
                }
            )
            print("   ", json.dumps(rows[-1]), flush=True)
    return rows


def random_weights_copy(model: Path, out: Path) -> Path:
    """The same architecture and tokenizer as ``model`` with random weights (for speed runs where the
    real weights cannot travel, e.g. to a lent GPU machine)."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    shutil.copytree(model, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(model), add_pooling_layer=False).save_pretrained(out)
    return out


def torch_exact_search(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> list[dict]:
    """GPU exact inner-product search with torch (matmul + top-k), fp16 and fp32, single queries and a batch."""
    import torch

    rows = []
    for dtype in (torch.float16, torch.float32):
        db = torch.from_numpy(vectors).to("cuda", dtype)
        qs = torch.from_numpy(queries).to("cuda", dtype)
        for _ in range(10):
            torch.topk(db @ qs[0], k)
        torch.cuda.synchronize()
        lat = []
        for q in qs:
            t0 = time.perf_counter()
            torch.topk(db @ q, k).indices.cpu()
            lat.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        torch.topk(qs @ db.T, k, dim=1).indices.cpu()
        batch_ms = (time.perf_counter() - t0) * 1000
        rows.append(
            {
                "device": "gpu",
                "n_vectors": len(vectors),
                "factory": f"exact (torch {str(dtype)[6:]})",
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                "batch_ms": round(batch_ms, 2),
                "batch_queries": len(qs),
            }
        )
        print("   ", json.dumps(rows[-1]), flush=True)
        del db, qs
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = command("eval.bench.dense", __doc__, False)
    ap.add_argument("--full", action="store_true", help="1,000,000 vectors instead of 100,000")
    ap.add_argument("--n", type=int, help="number of vectors (overrides --full)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument(
        "--sigma",
        type=float,
        default=0.015,
        help="noise per dimension: 0.015 keeps a copy closer to its source (cosine ≈ 0.96) than the "
        "source's nearest real neighbour (median ≈ 0.944 for WenTian titles)",
    )
    ap.add_argument("--model", default=None, help="model folder (default: the WenTian config's base model)")
    ap.add_argument("--out", default="reports/bench/dense.json")
    ap.add_argument("--data", default=str(SHARED), help="folder with wentian/ and querylog/")
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="same architecture, random weights: speed only (recall figures are then meaningless)",
    )
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU encoder and CPU FAISS runs")
    args = ap.parse_args(argv)
    data = Path(args.data)
    corpus, qlog = data / "wentian" / "corpus.tsv", data / "querylog" / "taobao_queries.tsv"
    if not corpus.is_file() or not qlog.is_file():
        print(f"skipped: {corpus} or {qlog} is absent")
        return 0
    import torch

    from core.config import load_config
    from indexer.encoder import Encoder, resolve_model

    cfg = load_config(ROOT / "configs" / "wentian.yaml")
    model = resolve_model(args.model or cfg.dense.base_model, cfg.root)
    if args.random_weights:
        import tempfile

        model = random_weights_copy(Path(model), Path(tempfile.mkdtemp()) / "model")
    _, titles = read_id_text(corpus)
    _, qtexts = read_id_text(qlog)
    rng = np.random.default_rng(0)
    qtexts = [qtexts[i] for i in rng.choice(len(qtexts), args.queries, replace=False)]
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "model": str(model),
        "encoder": [],
        "faiss": [],
    }

    enc = None  # the encoder that embeds the benchmark's vectors: the GPU one where there is a GPU
    if not args.gpu_only:
        enc = Encoder(model, max_length=cfg.dense.max_length, batch_size=cfg.dense.batch_size, device="cpu")
        result["encoder"].append(encoder_throughput(enc, titles[:1000], qtexts))
        print("encoder:", json.dumps(result["encoder"][-1]), flush=True)
    if torch.cuda.is_available():
        gpu_enc = Encoder(model, max_length=cfg.dense.max_length, batch_size=256, device="cuda")
        result["encoder"].append(encoder_throughput(gpu_enc, titles, qtexts))
        print("encoder:", json.dumps(result["encoder"][-1]), flush=True)
        enc = gpu_enc
    if enc is None:
        print("error: --gpu-only needs a CUDA device", file=sys.stderr)
        return 2
    cache = ROOT / "indexes" / "bench"
    base = embeddings(enc, titles, "titles", cache)
    qvecs = embeddings(enc, qtexts, "queries", cache)
    n = args.n or (1_000_000 if args.full else 100_000)
    vectors = synthetic_vectors(base, n, args.sigma)
    result["synthetic"] = neighbourhood(base, args.sigma)
    print("synthetic vectors:", json.dumps(result["synthetic"]), flush=True)
    print(f"FAISS over {n} vectors around {len(base)} WenTian title embeddings, {len(qvecs)} real queries", flush=True)
    if not args.gpu_only:
        import faiss

        gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        result["faiss"] = bench_faiss(vectors, qvecs, gpu=gpu)
    if torch.cuda.is_available():
        result["faiss"] += torch_exact_search(vectors, qvecs)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    cols = [
        "device",
        "n_vectors",
        "factory",
        "params",
        "build_s",
        "size_mb",
        "p50_ms",
        "p99_ms",
        "recall@10",
        "speedup_vs_flat",
        "batch_ms",
    ]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in result["faiss"]:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    ok = [
        r
        for r in result["faiss"]
        if r["device"] == "cpu"
        and r["factory"] != "Flat"
        and "recall@10" in r
        and r["recall@10"] >= 0.95
        and r["speedup_vs_flat"] >= 10
    ]
    if not args.gpu_only:
        print(
            "target (recall@10 >= 0.95 at >= 10x Flat): "
            + ("met by " + ", ".join(f"{r['factory']} {r['params']}" for r in ok) if ok else "MISSED")
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
