"""Typed configuration, loaded once from ``configs/*.yaml``.

Every package reads its settings from these dataclasses; nothing below this
module opens a YAML file.  The config sits in ``indexer`` because ``indexer``
is the bottom of the dependency graph (engine, finetune and eval import it,
never the reverse).

Relative paths in a config resolve against its ``root`` (default ``..``:
the project root for a file in ``configs/``), itself relative to the
config file.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.types import FIRST_STAGES, EcomsearchError


class ConfigError(EcomsearchError, ValueError):
    """A config file is missing, malformed or names an unknown field."""


# how a setting enters a fingerprint (field metadata, one key per fingerprint; unmarked settings always do):
# Config.index_fingerprint ("index") and a trained model's settings hash ("train", finetune.job)
NOT_INDEXED = {"index": "never"}  # it does not change what an index holds
INDEXED_WHEN_SET = {"index": "when_set"}  # added after indexes existed: only a non-default value counts, so an
# index built before the setting stays current
NOT_TRAINED = {"train": "never"}  # it does not change the trained model (wall time, where events are stored)
TRAINED_WHEN_SET = {"train": "when_set"}  # added after models existed: a model trained before stays current


@dataclass
class CatalogConfig:
    # not in the index fingerprint: the catalog's content is (catalog_sha256 in each manifest), so a built tree
    # copied to another folder stays current
    path: Path = field(metadata=NOT_INDEXED)
    # jsonl | csv | tsv | auto (by extension)
    format: str = "auto"
    # our field name -> column name in the file (id, title, category, brand, price, attributes)
    columns: dict[str, str] = field(default_factory=dict)
    skip_bad_rows: bool = field(default=False, metadata=NOT_INDEXED)
    # where rejected rows go with --skip-bad-rows; default: <index dir>/rejected.jsonl
    rejects_path: Path | None = field(default=None, metadata=NOT_INDEXED)


@dataclass
class TextConfig:
    traditional_to_simplified: bool = True
    # extra jieba dictionary (one word per line, optional frequency and POS, jieba format)
    user_dict: Path | None = field(default=None, metadata=NOT_INDEXED)  # its content is fingerprinted
    # add the catalog's brands and categories to jieba's dictionary
    dict_from_catalog: bool = True
    # stopword file; None uses the built-in list
    stopwords: Path | None = field(default=None, metadata=NOT_INDEXED)  # its content is fingerprinted
    # also index each Latin/number part of a mixed token (iphone15pro -> iphone, 15, pro)
    split_alnum: bool = True
    # character n-grams (1..n) for Han words jieba does not know; 0 turns it off
    unknown_word_ngrams: int = 0
    fold_plurals: bool = True
    # join a number and a following unit ("500 ml" -> 500ml)
    join_units: bool = True
    # English measurements: fractions as decimals, unit spellings as one token (1/2 in. = 1/2" = 0.5in)
    english_units: bool = field(default=False, metadata=INDEXED_WHEN_SET)


@dataclass
class BM25Config:
    # bm25s method: robertson | lucene | atire | bm25l | bm25+
    method: str = "lucene"
    k1: float = 1.5
    b: float = 0.75
    delta: float = 0.5
    # token fields and their weights: "words" (jieba search mode), "chars" (Han characters);
    # with several fields each field's scores are scaled by the query's best score, then weighted and summed
    fields: dict[str, float] = field(default_factory=lambda: {"words": 1.0})


@dataclass
class DenseConfig:
    # the bi-encoder the `dense` stage uses: a local folder (relative to root) or a hub id
    model: str = "models/base"
    # the zero-shot base model (`dense-base` stage; `make model` builds it into models/base)
    base_model: str = "models/base"
    max_length: int = 64
    batch_size: int = 64
    device: str = "auto"  # auto: cuda when torch sees a GPU, else cpu
    # FAISS index factory string: Flat, HNSW32, IVF4096,PQ32, ...
    factory: str = "Flat"
    # how queries are encoded at search time (products are always encoded by torch at build time):
    # torch, or onnx (+ quantize: none | int8), exported by `python -m finetune.export_onnx`
    query_runtime: str = "torch"
    query_quantize: str = "none"
    # search-time parameters: nprobe (IVF), efSearch (HNSW)
    nprobe: int = 32
    ef_search: int = 128
    # vocabulary trimming of the `dense` model: keep the pieces the catalog and these training
    # queries need (never dev or held-out queries), plus every single character
    trim_vocab: bool = False
    trim_queries: Path | None = None
    # product groups: spherical k-means over the product vectors, computed by `make index` and stored with the
    # dense index (personalization's stand-in for categories); 0 = about sqrt(products / 2), within 8..1024
    groups: int = 0


@dataclass
class MilvusConfig:
    """``search.backend: milvus`` (indexer.backends.milvus): where the collection lives and how it is indexed."""

    # a Milvus Lite file (default <index_dir>/milvus.db, started inside the engine) or http://host:19530
    uri: str | None = None
    # the alias queries use (default: the config's name); each build is a collection of its own behind it
    collection: str | None = None
    # the vector index: FLAT (exact, as FAISS Flat) or IVF_FLAT here; HNSW on a Milvus server
    index_type: str = "FLAT"
    nlist: int = 128
    nprobe: int = 16
    # rows per insert call (Milvus Lite stalls on one very large insert)
    insert_batch: int = 1000
    # with several BM25 token fields, each field is searched this many times deeper than asked, then merged
    bm25_oversample: int = 4


@dataclass
class SearchConfig:
    stages: list[str] = field(default_factory=lambda: ["bm25"])
    # where the first stages run: local (bm25s + FAISS in this process) or milvus (one Milvus collection)
    backend: str = "local"
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    # candidates each first stage hands on
    candidates: int = 100
    # longer queries are cut here (the result says `truncated`); a 1 MB query costs no more than this
    max_query_chars: int = 256
    # the deepest hit a query may ask for (k + offset)
    max_k: int = 1000
    # recent results kept per (query, filters, k, offset, user-profile version, index version); 0: no cache
    cache_size: int = 2048


@dataclass
class RerankConfig:
    # the fine-tuned cross-encoder (`make finetune` writes models/<config>/cross-encoder); None: no rerank
    model: str | None = None
    # candidates each first stage (bm25, dense) hands the cross-encoder; their union is reranked
    depth: int = 50
    # combined score = weight * z(cross-encoder) + (1 - weight) * z(first stage); 1.0: cross-encoder alone
    weight: float = 0.5
    # the first-stage score: rrf (reciprocal rank fusion) or scores (mean of the stages' standardized raw scores)
    first_stage: str = "rrf"
    # None: the max length the cross-encoder was trained with
    max_length: int | None = None
    batch_size: int = 128
    device: str = "auto"
    # how the cross-encoder runs: torch, or onnx (ONNX Runtime on the CPU, from `python -m finetune.export_onnx`)
    runtime: str = "torch"
    # onnx only: none, or int8 (dynamic quantization of the weights)
    quantize: str = "none"
    # the learned final ranker (LightGBM LambdaRank, trained by `make finetune`); None: the z-score mix above
    ranker: str | None = None


@dataclass
class PersonalConfig:
    """Events, user profiles and the personal features (engine.events, engine.profiles, engine.features)."""

    # where events and profiles live: an embedded SQLite file (default <index_dir>/events.sqlite), or
    # PostgreSQL (store: postgres) shared by many replicas: dsn (ECOMSEARCH_PG_DSN wins) and a schema of its own
    store: str = "sqlite"
    path: Path | None = None
    dsn: str | None = field(default=None, metadata=NOT_TRAINED)
    pg_schema: str = field(default="ecomsearch", metadata=NOT_TRAINED)
    # the HMAC key user ids are hashed with; the environment variable ECOMSEARCH_USER_KEY wins.
    # Without either, recording events is refused (only the demo config ships a key)
    user_key: str | None = None
    half_life_days: float = 30.0
    # events older than this are dropped (and profiles not updated for this long)
    retention_days: float = 365.0
    gains: dict[str, float] = field(default_factory=lambda: {"click": 1, "add_to_cart": 2, "purchase": 3})
    # facet values kept per facet in a profile (the weakest dropped)
    affinity_cap: int = 50
    bought_cap: int = 200
    price_bands: int = 5
    # smoothing of a product's click-through rate: (clicks + prior * ctr_all) / (impressions + prior)
    ctr_prior: float = 20.0
    # how often (seconds) a serving engine re-reads product statistics other processes recorded
    stats_refresh_seconds: float = 60.0
    # what counts in the product statistics every shopper's ranking reads (engine.events.CreditRule): one event
    # per user, product and type in each window of this many hours, and at most credits_per_user per window
    credit_window_hours: float = field(default=24.0, metadata=NOT_TRAINED)
    credits_per_user: int = field(default=200, metadata=NOT_TRAINED)
    # an event's timestamp may lie this far in the future (clock skew); older than retention_days or later is
    # refused (one event stamped in the year 9999 would otherwise outweigh a profile's whole history)
    future_skew_seconds: float = field(default=300.0, metadata=NOT_TRAINED)


@dataclass
class TrainingLoopConfig:
    """What the shared training loop (finetune.loop) reads: optimizer, schedule, caps, evaluation, seed."""

    lr: float = 5e-5
    max_steps: int = 300
    max_minutes: float = 30.0
    warmup_steps: int = 20
    eval_every: int = 50
    seed: int = 0
    # data-parallel training processes (torch DDP over gloo/NCCL, started by Ray Train); each takes an equal
    # share of every batch, gradients are averaged: the same updates as one process, in less time per step
    workers: int = field(default=1, metadata=NOT_TRAINED)


@dataclass
class BiEncoderTrainConfig(TrainingLoopConfig):
    batch_size: int = 32
    # MNRL scale (1 / temperature); e5 was pre-trained at 100, sentence-transformers' default is 20
    scale: float = 100.0
    hard_negatives: int = 1
    # rank window the hard negatives are drawn from in the bm25 and dense-base rankings
    negatives_window: list[int] = field(default_factory=lambda: [10, 50])
    max_length: int = 64
    freeze_word_embeddings: bool = True
    # start from this model folder instead of the zero-shot base model (e.g. continue the fine-tuned one)
    init_from: Path | None = field(default=None, metadata=TRAINED_WHEN_SET)
    # distillation: a teacher-score cache of `python -m finetune.distill` (the cross-encoder's scores of each
    # training / unlabeled query's candidates); the bi-encoder also learns the teacher's order over them
    # (listwise KL), weighted by distill_weight, on distill_batch queries x distill_group candidates a step
    distill_from: Path | None = field(default=None, metadata=TRAINED_WHEN_SET)
    distill_weight: float = field(default=1.0, metadata=TRAINED_WHEN_SET)
    distill_batch: int = field(default=8, metadata=TRAINED_WHEN_SET)
    distill_group: int = field(default=8, metadata=TRAINED_WHEN_SET)
    distill_temperature: float = field(default=1.0, metadata=TRAINED_WHEN_SET)
    # > 0: train LoRA adapters of this rank on the attention's query and value projections (peft) instead of
    # the whole model; the adapters are saved under <out>/lora/ and the merged model as the bi-encoder
    lora_rank: int = field(default=0, metadata=TRAINED_WHEN_SET)
    lora_alpha: float = field(default=16.0, metadata=TRAINED_WHEN_SET)
    lora_dropout: float = field(default=0.1, metadata=TRAINED_WHEN_SET)


@dataclass
class CrossEncoderTrainConfig(TrainingLoopConfig):
    # keep the base model's first N transformer layers (None: all 12)
    num_layers: int | None = 4
    # queries per step; each brings one positive and group_size - 1 negatives
    batch_size: int = 16
    group_size: int = 4
    # listwise: softmax cross-entropy over each query's group; pointwise: binary cross-entropy per pair;
    # graded (graded judged pairs): softmax over up to group_size of a query's judged products matched to their
    # grades (ListNet)
    loss: str = "listwise"
    # negatives come from the union of the bm25 and dense candidates it will rerank, ranks in this window
    negatives_window: list[int] = field(default_factory=lambda: [0, 50])
    max_length: int = 96
    freeze_word_embeddings: bool = True
    max_steps: int = 1000
    warmup_steps: int = 50
    eval_every: int = 100
    # dev queries whose candidates each evaluation reranks (a subset of finetune.dev_queries: scoring is costly)
    eval_queries: int = 100
    # the encoder layers it starts from: base (the config's dense.base_model) or bi-encoder (dense.model,
    # the fine-tuned bi-encoder)
    init: str = "base"
    # parameter-efficient fine-tuning: LoRA adapters of this rank on the attention's query and value
    # projections (peft), the classifier head trained in full; 0 = full fine-tuning
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1


@dataclass
class RankerTrainConfig:
    """The LightGBM LambdaRank final ranker (finetune.ranker)."""

    num_leaves: int = 15
    learning_rate: float = 0.05
    num_rounds: int = 400
    min_data_in_leaf: int = 50
    early_stopping: int = 40
    # judged pairs: how many training queries to score (each costs a cross-encoder pass over its candidates)
    max_queries: int = 2000
    # judged pairs: leave those queries out of the cross-encoder's training, so the ranker learns how far to
    # trust cross-encoder scores of queries it has not seen (as at serving time), not of ones it was fitted on
    held_out: bool = field(default=False, metadata=TRAINED_WHEN_SET)
    # click logs: the last share of training sessions (by time) stops the boosting early
    valid_fraction: float = 0.15
    # judged pairs: choose the number of trees by k-fold cross-validation over the training queries and fit on
    # all of them (0: stop early on the last valid_fraction, as for click logs, whose validation must come later)
    cv_folds: int = field(default=0, metadata=TRAINED_WHEN_SET)
    # click logs: learn the position bias from the logged positions (an additive term dropped at serving time)
    position_debias: bool = True
    # personal features in a second booster on top of the first (f = g + h), each stopped early on its own
    staged: bool = True
    seed: int = 0


@dataclass
class FinetuneConfig:
    # click log (user_id, query, product_id, event, timestamp) or judged pairs (query, pid[, qid][, relevance])
    train: Path | None = None
    format: str = "auto"  # auto | clicklog | judged
    # click logs: the last `holdout_days` (or 1 - train_fraction of the events) evaluate, the rest trains
    holdout_days: float | None = None
    train_fraction: float = 0.8
    gains: dict[str, float] = field(default_factory=lambda: {"click": 1, "add_to_cart": 2, "purchase": 3})
    impressions_as_negatives: bool = False
    # graded judged pairs (Home Depot, 1-3): a judged product rated at least this is a positive, one rated below
    # it a known negative of its query (the cross-encoder learns the judged order, not only judged vs. unseen);
    # unset: every judged pair is a positive.  It enters the models' settings hashes with the training data's
    # source (finetune.inputs.load_training_data), as the file does
    positive_relevance: float | None = None
    # judged pairs: dev queries for evaluation during training (default: eval.queries)
    dev: Path | None = None
    # dev queries used for the evaluations during training (the first N)
    dev_queries: int = 300
    # where the trained models go (default models/<config name>)
    out_dir: Path | None = None
    biencoder: BiEncoderTrainConfig = field(default_factory=BiEncoderTrainConfig)
    crossencoder: CrossEncoderTrainConfig = field(default_factory=CrossEncoderTrainConfig)
    ranker: RankerTrainConfig = field(default_factory=RankerTrainConfig)


@dataclass
class EvalConfig:
    # judged queries `make eval` uses when none are given (query, pid[, qid][, relevance])
    queries: Path | None = None
    # gain = relevance + gain_offset (Home Depot: -1)
    gain_offset: float = 0.0
    # relevance at or above which a product counts as relevant for recall;
    # None: any product with a positive gain
    relevant_threshold: float | None = None
    ks: list[int] = field(default_factory=lambda: [10, 100, 1000])


@dataclass
class ServeConfig:
    """The HTTP service (engine.service, `make serve`)."""

    # cross-encoder work of concurrent requests is gathered for up to this long and scored in one batch (0: off)
    batch_window_ms: float = 3.0
    max_batch_pairs: int = 1024
    # request bodies above this are refused (413)
    max_body_bytes: int = 1_000_000
    # a POST /events batch holds at most this many events
    max_events: int = 10_000
    # > 0: reload the engine when a rebuilt index is swapped in (checked this often); 0: only POST /admin/reload
    watch_seconds: float = 2.0
    # web origins whose pages may call the API from a browser (CORS), e.g. ["https://shop.example"]; requests
    # that change state from a page of any other origin are refused (docs/security.md)
    cors_origins: list[str] = field(default_factory=list)


@dataclass
class QueryConfig:
    """Query understanding before retrieval (engine.understanding)."""

    rewrite: bool = True
    # which rules run, in this order: normalize, units, aliases, pinyin, typos
    rules: list[str] = field(default_factory=lambda: ["normalize", "units", "aliases", "pinyin", "typos"])
    # a word the catalog has in fewer titles than this is not a catalog word (pinyin, typos)
    min_df: int = 3


@dataclass
class Config:
    name: str
    catalog: CatalogConfig
    index_dir: Path
    text: TextConfig = field(default_factory=TextConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    dense: DenseConfig = field(default_factory=DenseConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    personal: PersonalConfig = field(default_factory=PersonalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    source: Path | None = None
    root: Path = Path(".")

    def index_fingerprint(self) -> str:
        """Hash of every setting that changes what an index holds."""
        payload = {name: marked_settings(getattr(self, name), "index") for name in ("catalog", "text", "bm25")}
        # the contents of the word lists matter, not only their paths
        for name in ("user_dict", "stopwords"):
            p = getattr(self.text, name)
            if p is not None:
                payload["text"][name + "_sha256"] = (
                    hashlib.sha256(Path(p).read_bytes()).hexdigest() if Path(p).is_file() else "missing"
                )
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def rejects_path(self) -> Path:
        return self.catalog.rejects_path or self.index_dir.with_name(self.index_dir.name + ".rejected.jsonl")


def marked_settings(section, key: str) -> dict:
    """A config section's settings as they enter the fingerprint ``key`` (``index``, ``train``; see
    :data:`NOT_INDEXED`, :data:`NOT_TRAINED`)."""
    out = {}
    for f in dataclasses.fields(section):
        how = f.metadata.get(key)
        value = getattr(section, f.name)
        if how == "never" or (how == "when_set" and value == f.default):
            continue
        out[f.name] = _jsonable(value)
    return out


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


_PATH_FIELDS = {
    "path",
    "rejects_path",
    "user_dict",
    "stopwords",
    "queries",
    "trim_queries",
    "train",
    "dev",
    "out_dir",
    "distill_from",
    "init_from",
}


def _section(data, where: str) -> dict:
    """A config section as a dict (missing: empty); anything but a mapping is an error naming it."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__} {str(data)[:60]}")
    return dict(data)


def _build(cls, data: dict | None, where: str, root: Path):
    data = _section(data, where)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    for name, value in list(data.items()):
        if name in _PATH_FIELDS and value is not None:
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{name}: expected a path (a string), got {type(value).__name__} {value!r}")
            p = Path(value)
            data[name] = p if p.is_absolute() else (root / p).resolve()
    hints = typing.get_type_hints(cls)
    for name, value in list(data.items()):
        if isinstance(value, str) and _has_type(1.0, hints[name]) and not _has_type(value, hints[name]):
            try:  # YAML 1.1 reads 5e-4 (no dot) as a string; a float field takes it as the number it spells
                data[name] = value = float(value)
            except ValueError:
                pass
        if not _has_type(value, hints[name]):
            raise ConfigError(
                f"{where}.{name}: expected {_type_name(hints[name])}, got {type(value).__name__} {value!r}"
            )
    try:
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _has_type(value: Any, tp: Any) -> bool:
    """Whether a YAML value fits a field's annotation (int for a float; never a bool for a number)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if origin is list:
        return isinstance(value, list) and (not args or all(_has_type(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and (
            not args or all(_has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items())
        )
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is Path:
        return isinstance(value, (str, Path))
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if args:
        return f"{typing.get_origin(tp).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "a path" if tp is Path else getattr(tp, "__name__", str(tp))


def _build_finetune(data: dict | None, where: str, root: Path) -> FinetuneConfig:
    data = _section(data, where)
    bi = _build(BiEncoderTrainConfig, data.pop("biencoder", None), f"{where}.biencoder", root)
    ce = _build(CrossEncoderTrainConfig, data.pop("crossencoder", None), f"{where}.crossencoder", root)
    rk = _build(RankerTrainConfig, data.pop("ranker", None), f"{where}.ranker", root)
    ft = _build(FinetuneConfig, data, where, root)
    ft.biencoder, ft.crossencoder, ft.ranker = bi, ce, rk
    return ft


def _build_search(data: dict | None, where: str, root: Path) -> SearchConfig:
    data = _section(data, where)
    mv = _build(MilvusConfig, data.pop("milvus", None), f"{where}.milvus", root)
    sc = _build(SearchConfig, data, where, root)
    sc.milvus = mv
    return sc


def load_config(path: str | Path, **overrides: Any) -> Config:
    """Load a YAML config into a :class:`Config`.

    ``overrides`` replace top-level sections' fields, e.g.
    ``load_config(p, bm25={"k1": 1.2})``; used by tuning scripts and tests.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    raw = _merge(raw, overrides)
    return config_from_dict(raw, base=path.parent, source=path)


def _merge(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s values, nested mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_to_dict(cfg: Config) -> dict:
    """The config as the YAML mapping :func:`load_config` reads (paths absolute): what a child process or
    another replica needs to open the same engine."""
    raw = _jsonable(cfg)
    raw.pop("source", None)
    return raw


def write_config(cfg: Config, path: str | Path) -> Path:
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["rerank.weight=0.6", "finetune.crossencoder.max_steps=900"]`` -> nested overrides for
    :func:`load_config` (values read as YAML scalars)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set twice")
        node[parts[-1]] = yaml.safe_load(value)
    return out


def config_from_dict(raw: dict, base: Path, source: Path | None = None) -> Config:
    where = str(source or "config")
    raw = dict(raw)
    known = {
        "name",
        "root",
        "catalog",
        "index_dir",
        "text",
        "bm25",
        "dense",
        "search",
        "rerank",
        "finetune",
        "eval",
        "personal",
        "serve",
        "query",
    }
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; known: {sorted(known)}")
    for key in ("root", "index_dir", "name"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{where}: {key}: expected a string (a path), got {type(raw[key]).__name__} {raw[key]!r}")
    root = (base / raw.pop("root", "..")).resolve()
    if "catalog" not in raw or not isinstance(raw["catalog"], dict) or "path" not in raw["catalog"]:
        raise ConfigError(f"{where}: catalog.path is required")
    if "index_dir" not in raw:
        raise ConfigError(f"{where}: index_dir is required")
    index_dir = Path(raw["index_dir"])
    cfg = Config(
        name=str(raw.get("name") or (source.stem if source else "config")),
        catalog=_build(CatalogConfig, raw["catalog"], f"{where}: catalog", root),
        index_dir=index_dir if index_dir.is_absolute() else root / index_dir,
        text=_build(TextConfig, raw.get("text"), f"{where}: text", root),
        bm25=_build(BM25Config, raw.get("bm25"), f"{where}: bm25", root),
        dense=_build(DenseConfig, raw.get("dense"), f"{where}: dense", root),
        search=_build_search(raw.get("search"), f"{where}: search", root),
        rerank=_build(RerankConfig, raw.get("rerank"), f"{where}: rerank", root),
        finetune=_build_finetune(raw.get("finetune"), f"{where}: finetune", root),
        eval=_build(EvalConfig, raw.get("eval"), f"{where}: eval", root),
        personal=_build(PersonalConfig, raw.get("personal"), f"{where}: personal", root),
        serve=_build(ServeConfig, raw.get("serve"), f"{where}: serve", root),
        query=_build(QueryConfig, raw.get("query"), f"{where}: query", root),
        source=source,
        root=root,
    )
    _validate(cfg, where)
    return cfg


def _validate(cfg: Config, where: str) -> None:
    if cfg.catalog.format not in {"auto", "jsonl", "csv", "tsv"}:
        raise ConfigError(f"{where}: catalog.format must be auto, jsonl, csv or tsv, not {cfg.catalog.format!r}")
    allowed_cols = {"id", "title", "category", "brand", "price", "attributes"}
    bad = set(cfg.catalog.columns) - allowed_cols
    if bad:
        raise ConfigError(
            f"{where}: catalog.columns maps unknown field(s) {sorted(bad)}; known: {sorted(allowed_cols)}"
        )
    if cfg.bm25.method not in {"robertson", "lucene", "atire", "bm25l", "bm25+"}:
        raise ConfigError(
            f"{where}: bm25.method {cfg.bm25.method!r} is not one of robertson, lucene, atire, bm25l, bm25+"
        )
    if cfg.bm25.k1 < 0 or not 0 <= cfg.bm25.b <= 1:
        raise ConfigError(f"{where}: bm25 needs k1 >= 0 and 0 <= b <= 1")
    if (
        not cfg.bm25.fields
        or any(f not in ("words", "chars") for f in cfg.bm25.fields)
        or any(not isinstance(w, (int, float)) or w <= 0 for w in cfg.bm25.fields.values())
    ):
        raise ConfigError(f"{where}: bm25.fields must map 'words' and/or 'chars' to weights > 0, got {cfg.bm25.fields}")
    if cfg.text.unknown_word_ngrams < 0:
        raise ConfigError(f"{where}: text.unknown_word_ngrams must be >= 0")
    for name in ("user_dict", "stopwords"):  # read by every tokenizer: a missing one is a config error, now
        p = getattr(cfg.text, name)
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"{where}: text.{name}: file not found: {p}")
    ft = cfg.finetune
    if ft.format not in ("auto", "clicklog", "judged"):
        raise ConfigError(f"{where}: finetune.format must be auto, clicklog or judged, not {ft.format!r}")
    if not 0 < ft.train_fraction < 1:
        raise ConfigError(f"{where}: finetune.train_fraction must be between 0 and 1")
    for name, t in (("biencoder", ft.biencoder), ("crossencoder", ft.crossencoder)):
        w = t.negatives_window
        if len(w) != 2 or not 0 <= w[0] < w[1]:
            raise ConfigError(f"{where}: finetune.{name}.negatives_window must be [start, end) with 0 <= start < end")
    if ft.crossencoder.loss not in ("listwise", "pointwise", "graded"):
        raise ConfigError(f"{where}: finetune.crossencoder.loss must be listwise, pointwise or graded")
    if ft.crossencoder.init not in ("base", "bi-encoder"):
        raise ConfigError(
            f"{where}: finetune.crossencoder.init must be base or bi-encoder, not {ft.crossencoder.init!r}"
        )
    if ft.crossencoder.group_size < 2:
        raise ConfigError(f"{where}: finetune.crossencoder.group_size must be >= 2 (a positive and a negative)")
    if ft.ranker.cv_folds < 0 or ft.ranker.cv_folds == 1:
        raise ConfigError(f"{where}: finetune.ranker.cv_folds must be 0 (off) or >= 2, not {ft.ranker.cv_folds}")
    if cfg.rerank.first_stage not in ("rrf", "scores"):
        raise ConfigError(f"{where}: rerank.first_stage must be rrf or scores, not {cfg.rerank.first_stage!r}")
    if cfg.rerank.ranker and not cfg.rerank.model:
        raise ConfigError(f"{where}: rerank.ranker orders the cross-encoder's candidates: set rerank.model too")
    if not 0 <= cfg.rerank.weight <= 1 or cfg.rerank.depth < 1:
        raise ConfigError(f"{where}: rerank.weight must be in [0, 1] and rerank.depth >= 1")
    for name, runtime, quantize in (
        ("rerank", cfg.rerank.runtime, cfg.rerank.quantize),
        ("dense.query", cfg.dense.query_runtime, cfg.dense.query_quantize),
    ):
        if runtime not in ("torch", "onnx") or quantize not in ("none", "int8"):
            raise ConfigError(
                f"{where}: {name} runtime must be torch or onnx and quantize none or int8, "
                f"not {runtime!r} / {quantize!r}"
            )
        if quantize != "none" and runtime != "onnx":
            raise ConfigError(f"{where}: {name} quantize {quantize!r} needs runtime onnx")
    sc = cfg.search
    if sc.backend not in ("local", "milvus"):
        raise ConfigError(f"{where}: search.backend {sc.backend!r} is not one of local, milvus")
    if sc.milvus.index_type.upper() not in ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"):
        raise ConfigError(
            f"{where}: search.milvus.index_type {sc.milvus.index_type!r} is not one of FLAT, IVF_FLAT, IVF_SQ8, HNSW"
        )
    if sc.milvus.insert_batch < 1 or sc.milvus.bm25_oversample < 1:
        raise ConfigError(f"{where}: search.milvus.insert_batch and bm25_oversample must be >= 1")
    if sc.max_query_chars < 1 or sc.max_k < 1 or sc.cache_size < 0 or sc.candidates < 1:
        raise ConfigError(f"{where}: search.max_query_chars, max_k and candidates must be >= 1, cache_size >= 0")
    pc = cfg.personal
    if pc.store not in ("sqlite", "postgres"):
        raise ConfigError(
            f"{where}: personal.store {pc.store!r} is not built in (sqlite, postgres); a shop's own "
            "store plugs in through engine.events.EventStore"
        )
    if pc.store == "postgres" and not (pc.dsn or os.environ.get("ECOMSEARCH_PG_DSN")):
        raise ConfigError(
            f"{where}: personal.store postgres needs personal.dsn or the environment variable ECOMSEARCH_PG_DSN"
        )
    if pc.half_life_days <= 0 or pc.retention_days <= 0:
        raise ConfigError(f"{where}: personal.half_life_days and personal.retention_days must be > 0")
    bad = set(pc.gains) - {"impression", "click", "add_to_cart", "purchase"}
    if bad:
        raise ConfigError(f"{where}: personal.gains names unknown event(s) {sorted(bad)}")
    if pc.path is None:
        pc.path = cfg.index_dir / "events.sqlite"
    stages = set(FIRST_STAGES)
    bad = [s for s in cfg.search.stages if s not in stages]
    if bad:
        raise ConfigError(f"{where}: search.stages {bad} not available; this build has {sorted(stages)}")
