"""Vocabulary trimming: a smaller copy of an encoder that embeds a catalog's texts identically.

multilingual-e5-small spends 96 of its 118 M parameters on a 250,037-piece
embedding matrix, most of it for scripts a Chinese shop never sees.  Keep
only the pieces that the catalog's titles and the training queries (never
dev or held-out queries) are cut into, every single-character piece (so
unseen text still tokenizes into characters rather than ``<unk>``), and the
special tokens; shrink the embedding matrix to match.

The tokenizer is a Unigram model: the best segmentation of a covered text
uses only kept pieces, and a subset of the vocabulary cannot offer a
better one, so covered texts get the same pieces (renumbered) and
therefore the same embeddings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

QUERY_PREFIX, PASSAGE_PREFIX = "query: ", "passage: "


def trimmed_path(cfg) -> Path:
    """Where the config's trimmed copy of its ``dense`` model lives."""
    return cfg.root / "models" / cfg.name / "trimmed"


def ensure_trimmed(cfg, passages: list[str], catalog_sha: str | None) -> Path:
    """Build (or reuse, when its sources have not changed) the trimmed copy of the config's ``dense`` model."""
    from indexer.encoder import model_fingerprint, resolve_model
    from indexer.store import sha256_file

    src = resolve_model(cfg.dense.model, cfg.root)
    qfile = cfg.dense.trim_queries
    sources = {
        "model": model_fingerprint(src, 0),
        "catalog_sha256": catalog_sha,
        "queries_sha256": sha256_file(qfile) if qfile else None,
    }
    out = trimmed_path(cfg)
    info = out / "trim.json"
    if info.is_file() and json.loads(info.read_text()).get("sources") == sources:
        return out
    queries = read_query_column(qfile) if qfile else []
    trim_model(Path(src), out, passages, queries, sources=sources)
    return out


def read_query_column(path: Path, distinct: bool = True) -> list[str]:
    """The texts of the ``query`` column of a TSV/CSV file with a header row, in file order (each once when
    ``distinct``)."""
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        delimiter = "," if Path(path).suffix.lower() == ".csv" else "\t"
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        header = next(reader, [])
        if "query" not in header:
            raise ValueError(f"{path}:1: dense.trim_queries needs a 'query' column, found {header}")
        col = header.index("query")
        texts = (row[col] for row in reader if len(row) > col and row[col].strip())
        return list(dict.fromkeys(texts)) if distinct else list(texts)


def used_piece_ids(tokenizer_json: Path, texts: Iterable[str], batch: int = 4096) -> set[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    texts = list(texts)
    used: set[int] = set()
    for i in range(0, len(texts), batch):
        for enc in tok.encode_batch(texts[i : i + batch], add_special_tokens=False):
            used.update(enc.ids)
    return used


def trim_model(
    src: Path, out: Path, passages: Iterable[str], queries: Iterable[str] = (), sources: dict | None = None
) -> dict:
    """Write a trimmed copy of the sentence-transformers model at ``src`` into ``out``; return its stats."""
    from safetensors.numpy import load_file, save_file

    src, out = Path(src), Path(out)
    spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    if spec["model"]["type"] != "Unigram":
        raise ValueError(f"{src}: vocabulary trimming supports Unigram tokenizers, not {spec['model']['type']}")
    vocab = spec["model"]["vocab"]
    texts = [PASSAGE_PREFIX + t for t in passages] + [QUERY_PREFIX + q for q in queries]
    keep = used_piece_ids(src / "tokenizer.json", texts)
    keep |= {t["id"] for t in spec["added_tokens"]}
    keep.add(spec["model"]["unk_id"])
    # every single character, bare or after the word-start marker, so unseen text still splits into characters
    keep |= {i for i, (piece, _) in enumerate(vocab) if len(piece.lstrip("▁")) <= 1}
    weights = load_file(str(src / "model.safetensors"))
    emb_key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    n_rows = weights[emb_key].shape[0]
    old_ids = np.array(sorted(i for i in keep if i < n_rows), dtype=np.int64)
    new_of = {int(o): n for n, o in enumerate(old_ids)}

    out_tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(out_tmp, ignore_errors=True)
    shutil.copytree(src, out_tmp, ignore=shutil.ignore_patterns("model.safetensors", "tokenizer.json"))
    spec["model"]["vocab"] = [vocab[i] for i in old_ids if i < len(vocab)]
    spec["model"]["unk_id"] = new_of[spec["model"]["unk_id"]]
    for t in spec["added_tokens"]:
        t["id"] = new_of[t["id"]]
    for st in (spec.get("post_processor") or {}).get("special_tokens", {}).values():
        st["ids"] = [new_of[i] for i in st["ids"]]
    (out_tmp / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    weights[emb_key] = np.ascontiguousarray(weights[emb_key][old_ids])
    save_file(weights, str(out_tmp / "model.safetensors"))
    cfg = json.loads((out_tmp / "config.json").read_text())
    cfg["vocab_size"] = len(old_ids)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if cfg.get(key) is not None:
            cfg[key] = new_of[cfg[key]]
    (out_tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    stats = {
        "source": str(src),
        "pieces_before": n_rows,
        "pieces_after": len(old_ids),
        "texts_covered": len(texts),
        "bytes_before": (src / "model.safetensors").stat().st_size,
        "bytes_after": (out_tmp / "model.safetensors").stat().st_size,
        "sources": sources,
    }
    (out_tmp / "trim.json").write_text(json.dumps(stats, indent=2))
    if out.exists():
        shutil.rmtree(out)
    out_tmp.rename(out)
    return stats
