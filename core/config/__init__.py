"""Typed configuration, loaded once from ``configs/*.yaml`` by :func:`load_config` into :class:`Config`.

Every package reads its settings from these dataclasses; nothing else opens a YAML file.  The config sits in
the bottom layer (``core``) because every layer receives the whole config; its sections are grouped by the
layer they configure: :mod:`core.config.index` (``indexer/``), :mod:`core.config.serving` (``engine/``),
:mod:`core.config.training` (``finetune/``, ``eval/``), built by the one loader in :mod:`core.config.loader`.

Relative paths in a config resolve against its ``root`` (default ``..``: the project root for a file in
``configs/``), itself relative to the config file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.config.index import BM25Config, CatalogConfig, DenseConfig, MilvusConfig, TextConfig
from core.config.loader import (
    INDEXED_WHEN_SET,
    NOT_INDEXED,
    NOT_TRAINED,
    TRAINED_WHEN_SET,
    ConfigError,
    build_section,
    jsonable,
    marked_settings,
    merge,
    parse_overrides,
    section_mapping,
)
from core.config.recs import RecsConfig
from core.config.suggest import SuggestConfig
from core.config.serving import (
    FusionConfig,
    InterleaveConfig,
    PersonalConfig,
    QueryConfig,
    RerankConfig,
    SearchConfig,
    ServeConfig,
)
from core.config.training import (
    DEBIAS_METHODS,
    BiEncoderTrainConfig,
    CrossEncoderTrainConfig,
    EvalConfig,
    FinetuneConfig,
    RankerTrainConfig,
    RetrainConfig,
    TrainingLoopConfig,
)
from core.types import FIRST_STAGES

__all__ = [
    "DEBIAS_METHODS",
    "INDEXED_WHEN_SET",
    "NOT_INDEXED",
    "NOT_TRAINED",
    "TRAINED_WHEN_SET",
    "BM25Config",
    "BiEncoderTrainConfig",
    "CatalogConfig",
    "Config",
    "ConfigError",
    "CrossEncoderTrainConfig",
    "DenseConfig",
    "EvalConfig",
    "FinetuneConfig",
    "FusionConfig",
    "InterleaveConfig",
    "MilvusConfig",
    "PersonalConfig",
    "QueryConfig",
    "RankerTrainConfig",
    "RecsConfig",
    "RerankConfig",
    "RetrainConfig",
    "SearchConfig",
    "SuggestConfig",
    "ServeConfig",
    "TextConfig",
    "TrainingLoopConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "marked_settings",
    "parse_overrides",
    "write_config",
]


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
    recs: RecsConfig = field(default_factory=RecsConfig)
    suggest: SuggestConfig = field(default_factory=SuggestConfig)
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


def _build_nested(cls, subsections: dict, data: dict | None, where: str, root: Path):
    """A section with nested sections (``subsections``: field name -> its dataclass), each built on its own so
    that an error names ``<section>.<sub>.<field>``."""
    data = section_mapping(data, where)
    subs = {
        name: build_section(sub, data.pop(name, None), f"{where}.{name}", root) for name, sub in subsections.items()
    }
    section = build_section(cls, data, where, root)
    for name, value in subs.items():
        setattr(section, name, value)
    return section


def _build_finetune(data: dict | None, where: str, root: Path) -> FinetuneConfig:
    subs = {
        "biencoder": BiEncoderTrainConfig,
        "crossencoder": CrossEncoderTrainConfig,
        "ranker": RankerTrainConfig,
        "retrain": RetrainConfig,
    }
    return _build_nested(FinetuneConfig, subs, data, where, root)


def _build_serve(data: dict | None, where: str, root: Path) -> ServeConfig:
    return _build_nested(ServeConfig, {"interleave": InterleaveConfig}, data, where, root)


def _build_search(data: dict | None, where: str, root: Path) -> SearchConfig:
    return _build_nested(SearchConfig, {"milvus": MilvusConfig, "fusion": FusionConfig}, data, where, root)


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
    raw = merge(raw, overrides)
    return config_from_dict(raw, base=path.parent, source=path)


def config_to_dict(cfg: Config) -> dict:
    """The config as the YAML mapping :func:`load_config` reads (paths absolute): what a child process or
    another replica needs to open the same engine."""
    raw = jsonable(cfg)
    raw.pop("source", None)
    return raw


def write_config(cfg: Config, path: str | Path) -> Path:
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


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
        "recs",
        "suggest",
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
        catalog=build_section(CatalogConfig, raw["catalog"], f"{where}: catalog", root),
        index_dir=index_dir if index_dir.is_absolute() else root / index_dir,
        text=build_section(TextConfig, raw.get("text"), f"{where}: text", root),
        bm25=build_section(BM25Config, raw.get("bm25"), f"{where}: bm25", root),
        dense=build_section(DenseConfig, raw.get("dense"), f"{where}: dense", root),
        search=_build_search(raw.get("search"), f"{where}: search", root),
        rerank=build_section(RerankConfig, raw.get("rerank"), f"{where}: rerank", root),
        finetune=_build_finetune(raw.get("finetune"), f"{where}: finetune", root),
        eval=build_section(EvalConfig, raw.get("eval"), f"{where}: eval", root),
        personal=build_section(PersonalConfig, raw.get("personal"), f"{where}: personal", root),
        serve=_build_serve(raw.get("serve"), f"{where}: serve", root),
        query=build_section(QueryConfig, raw.get("query"), f"{where}: query", root),
        recs=build_section(RecsConfig, raw.get("recs"), f"{where}: recs", root),
        suggest=build_section(SuggestConfig, raw.get("suggest"), f"{where}: suggest", root),
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
    if ft.crossencoder.pooling not in ("cls", "mean"):
        raise ConfigError(
            f"{where}: finetune.crossencoder.pooling must be cls or mean, not {ft.crossencoder.pooling!r}"
        )
    if ft.crossencoder.init not in ("base", "bi-encoder"):
        raise ConfigError(
            f"{where}: finetune.crossencoder.init must be base or bi-encoder, not {ft.crossencoder.init!r}"
        )
    if ft.crossencoder.group_size < 2:
        raise ConfigError(f"{where}: finetune.crossencoder.group_size must be >= 2 (a positive and a negative)")
    if ft.ranker.cv_folds < 0 or ft.ranker.cv_folds == 1:
        raise ConfigError(f"{where}: finetune.ranker.cv_folds must be 0 (off) or >= 2, not {ft.ranker.cv_folds}")
    il = cfg.serve.interleave
    if il.mode not in ("team_draft", "ab") or not 0 < il.share <= 1:
        raise ConfigError(f"{where}: serve.interleave needs mode team_draft or ab and 0 < share <= 1")
    if il.candidate is not None and not cfg.rerank.model:
        raise ConfigError(f"{where}: serve.interleave.candidate is a ranker: set rerank.model too")
    if not 0.0 <= cfg.serve.explore <= 1.0:
        raise ConfigError(f"{where}: serve.explore is a share of searches, 0 to 1, not {cfg.serve.explore!r}")
    rt = ft.retrain
    if not rt.delta_features:
        raise ConfigError(f"{where}: finetune.retrain.delta_features must name at least one ranker feature")
    if rt.debias not in DEBIAS_METHODS + ("auto",):
        raise ConfigError(
            f"{where}: finetune.retrain.debias must be auto or one of {DEBIAS_METHODS}, not {rt.debias!r}"
        )
    if not 0 < rt.holdout_fraction < 1 or rt.window_days <= 0 or rt.holdout_days <= 0 or rt.crossencoder_minutes < 0:
        raise ConfigError(
            f"{where}: finetune.retrain needs window_days > 0, holdout_days > 0, 0 < holdout_fraction < 1 and "
            "crossencoder_minutes >= 0"
        )
    if cfg.rerank.first_stage not in ("rrf", "scores"):
        raise ConfigError(f"{where}: rerank.first_stage must be rrf or scores, not {cfg.rerank.first_stage!r}")
    if cfg.rerank.ranker and not cfg.rerank.model:
        raise ConfigError(f"{where}: rerank.ranker orders the cross-encoder's candidates: set rerank.model too")
    if not 0 <= cfg.rerank.weight <= 1 or cfg.rerank.depth < 1:
        raise ConfigError(f"{where}: rerank.weight must be in [0, 1] and rerank.depth >= 1")
    if cfg.rerank.lookup_depth and cfg.rerank.lookup_depth < cfg.rerank.depth:
        raise ConfigError(f"{where}: rerank.lookup_depth must be 0 (off) or at least rerank.depth")
    if cfg.rerank.base_cosine and not cfg.rerank.model:
        raise ConfigError(f"{where}: rerank.base_cosine is a feature of the reranked candidates: set rerank.model too")
    r = cfg.rerank
    if r.teacher and (not r.model or r.teacher_top < 2 or not 0 <= r.teacher_weight <= 1):
        raise ConfigError(
            f"{where}: rerank.teacher reorders the cross-encoder's top candidates: it needs rerank.model, "
            f"teacher_top >= 2 and teacher_weight in [0, 1] (got {r.teacher_top}, {r.teacher_weight})"
        )
    for name, runtime, quantize in (
        ("rerank", cfg.rerank.runtime, cfg.rerank.quantize),
        ("rerank.teacher", cfg.rerank.runtime, cfg.rerank.teacher_quantize),
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
    fu = sc.fusion
    if fu.method not in ("rrf", "scores") or fu.c < 0 or any(w < 0 for w in fu.weights.values()):
        raise ConfigError(f"{where}: search.fusion.method must be rrf or scores, c and weights >= 0")
    if fu.feedback < 0 or fu.feedback_below < 0 or not 0 < fu.feedback_weight <= 1:
        raise ConfigError(f"{where}: search.fusion.feedback, feedback_below must be >= 0, feedback_weight in (0, 1]")
    if fu.feedback_terms < 0 or fu.feedback_term_weight < 0 or fu.feedback_min_docs < 1:
        raise ConfigError(f"{where}: search.fusion.feedback_terms, feedback_term_weight >= 0, feedback_min_docs >= 1")
    if fu.feedback_terms and sc.backend != "local":
        raise ConfigError(f"{where}: search.fusion.feedback_terms re-scores the local BM25 index: backend local only")
    fused = set(sc.stages) | ({"bm25", "dense"} if "hybrid" in sc.stages else set())
    if unknown := sorted(set(fu.weights) - fused):
        raise ConfigError(f"{where}: search.fusion.weights names {unknown}, not in search.stages {sc.stages}")
    if sc.max_query_chars < 1 or sc.max_k < 1 or sc.cache_size < 0 or sc.candidates < 1:
        raise ConfigError(f"{where}: search.max_query_chars, max_k and candidates must be >= 1, cache_size >= 0")
    cfg.recs.check(where)
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
    if pc.half_life_days <= 0 or pc.retention_days <= 0 or pc.session_minutes <= 0:
        raise ConfigError(
            f"{where}: personal.half_life_days, personal.session_minutes and personal.retention_days must be > 0"
        )
    if pc.exposure not in ("examined", "shown"):
        raise ConfigError(f"{where}: personal.exposure must be examined or shown, not {pc.exposure!r}")
    bad = set(pc.gains) - {"impression", "click", "add_to_cart", "purchase"}
    if bad:
        raise ConfigError(f"{where}: personal.gains names unknown event(s) {sorted(bad)}")
    if pc.path is None:
        pc.path = cfg.index_dir / "events.sqlite"
    stages = set(FIRST_STAGES)
    bad = [s for s in cfg.search.stages if s not in stages]
    if bad:
        raise ConfigError(f"{where}: search.stages {bad} not available; this build has {sorted(stages)}")
