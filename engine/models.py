"""The models one index version answers with: each dense stage's query encoder and FAISS index, the cross-encoder
(or the micro-batcher in front of it), the learned final ranker, the cascade's teacher.

Each loads once, at first use, under the version's lock; a version opened on reload takes over its predecessor's
models where the files are unchanged (same fingerprint), so a reload that changed only the index reloads no model.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from engine.rerank import CrossEncoder
from indexer.bm25 import BM25Index
from core.config import Config
from indexer.encoder import ModelMissingError, model_fingerprint
from indexer.store import IndexLoadError, stage_folder


class ModelMismatchError(ModelMissingError):
    """A model was trained on another model's outputs than the config's (e.g. the ranker on another
    cross-encoder's scores)."""


class VersionModels:
    """The dense stages (encoder, index), the cross-encoder and the ranker of one index version."""

    def __init__(
        self,
        cfg: Config,
        bm25: BM25Index,
        root: Path,
        verify: bool,
        lock: threading.RLock,
        previous: "VersionModels | None" = None,
    ):
        self.cfg = cfg
        self.bm25 = bm25
        self.root = root  # the version folder every stage is opened from
        self.verify = verify
        self._lock = lock
        self._previous = previous  # models are taken over from it where unchanged (dropped by forget_previous)
        self.dense: dict[str, tuple] = {}  # stage -> (encoder, DenseIndex)
        self.cross_encoder_model: CrossEncoder | None = None
        self.scorer = None  # the cross-encoder, or a micro-batcher in front of it (enable_batching)
        self.ranker_model = None
        self.query_clicks_model = None  # the ranker's query_ctr snapshot, on this version's product rows
        self.candidate_model: tuple | None = None  # serve.interleave.candidate: (Ranker, its query clicks)
        self.teacher_model = None  # rerank.teacher: the cascade's larger cross-encoder

    def forget_previous(self) -> None:
        """Drop the reference to the version this one took models over from (once everything is loaded)."""
        self._previous = None

    # -- dense stages ------------------------------------------------------------------------------------------
    def dense_stage(self, stage: str):
        """The encoder and FAISS index of a dense stage, loaded once."""
        if stage in self.dense:
            return self.dense[stage]
        with self._lock:
            return self._load_dense(stage)

    def _load_dense(self, stage: str):
        if stage not in self.dense:
            from indexer.dense import DenseIndex, stage_index_dir

            folder = stage_index_dir(self.cfg, stage)
            if folder.name != stage:  # dense-base with the same model as dense: one encoder, one index
                self.dense[stage] = self.dense_stage(folder.name)
                return self.dense[stage]
            d = self.cfg.dense
            folder = stage_folder(self.cfg.index_dir, stage, self.root)  # this version's build, opened once
            old = self._previous.dense.get(stage) if self._previous is not None else None
            same_encoder = old is not None and old[0].fingerprint == encoder_fingerprint(self.cfg, stage)
            if same_encoder and old[1].manifest.get("build_id") == build_id(folder):
                self.dense[stage] = old  # same index build, same encoder
                return old
            encoder = old[0] if same_encoder else query_encoder(self.cfg, stage)
            index = DenseIndex.load(
                folder, encoder.fingerprint, verify=self.verify, nprobe=d.nprobe, ef_search=d.ef_search
            )
            products = self.bm25.products
            if index.manifest.get("catalog_sha256") != self.bm25.manifest.get("catalog_sha256") or index.n != len(
                products
            ):
                raise IndexLoadError(
                    f"{self.cfg.index_dir}: the {stage} index ({index.n} products) and the bm25 "
                    f"index ({len(products)}) do not hold the same catalog; rebuild both with "
                    "`make index`"
                )
            self.dense[stage] = (encoder, index)
        return self.dense[stage]

    # -- cross-encoder -----------------------------------------------------------------------------------------
    def cross_encoder(self) -> CrossEncoder:
        """The config's fine-tuned cross-encoder (``rerank.model``), loaded once."""
        if self.cross_encoder_model is not None:
            return self.cross_encoder_model
        with self._lock:
            return self._load_cross_encoder()

    def _load_cross_encoder(self) -> CrossEncoder:
        if self.cross_encoder_model is None:
            from indexer.encoder import resolve_model

            r = self.cfg.rerank
            if not r.model:
                raise ModelMissingError(
                    f"{self.cfg.source or self.cfg.name}: the rerank stage needs rerank.model "
                    "(a cross-encoder `make finetune` trains)"
                )
            path = Path(resolve_model(r.model, self.cfg.root))
            old = self._previous.cross_encoder_model if self._previous is not None else None
            if (
                old is not None
                and old.path == path
                and same_runtime(old, r)
                and old.fingerprint() == model_fingerprint(path, old.max_length)
            ):
                self.cross_encoder_model, self.scorer = old, self._previous.scorer
                return old
            if r.runtime == "onnx":
                from engine.onnx_models import OnnxCrossEncoder
                from engine.rerank import trained_max_length

                self.cross_encoder_model = OnnxCrossEncoder(
                    path, r.max_length or trained_max_length(path), r.batch_size, r.quantize
                )
            else:
                self.cross_encoder_model = CrossEncoder.load(
                    path, max_length=r.max_length, batch_size=r.batch_size, device=r.device
                )
            self.scorer = self.cross_encoder_model
        return self.cross_encoder_model

    def enable_batching(self, window_ms: float, max_pairs: int) -> None:
        """Score the cross-encoder pairs of concurrent queries together (:class:`engine.batching.MicroBatcher`)."""
        from engine.batching import MicroBatcher

        with self._lock:
            ce = self.cross_encoder()
            if not isinstance(self.scorer, MicroBatcher):
                self.scorer = MicroBatcher(ce, window_ms, max_pairs)

    def score_pairs(self, queries, titles) -> np.ndarray:
        """Cross-encoder scores of (query, title) pairs (through the micro-batcher when it is on)."""
        self.cross_encoder()
        return self.scorer.predict(queries, titles)

    # -- cascade teacher ---------------------------------------------------------------------------------------
    def teacher(self):
        """The cascade's larger cross-encoder (``rerank.teacher``), loaded once; None when the config names none."""
        if self.teacher_model is None and self.cfg.rerank.teacher:
            with self._lock:
                if self.teacher_model is None:
                    self.teacher_model = self._load_teacher()
        return self.teacher_model

    def _load_teacher(self):
        from indexer.encoder import resolve_model

        r = self.cfg.rerank
        path = Path(resolve_model(r.teacher, self.cfg.root))
        if not (path / "config.json").is_file():
            raise ModelMissingError(
                f"rerank.teacher {path} not found; train it with `python -m finetune --stages cross-encoder "
                "--cross-encoder-layers 12 --cross-encoder-out <folder>`"
            )
        old = self._previous.teacher_model if self._previous is not None else None
        if (
            old is not None
            and old.path == path
            and same_runtime(old, r, r.teacher_quantize, None)
            and old.fingerprint() == model_fingerprint(path, old.max_length)
        ):
            return old
        from engine.rerank import trained_max_length

        if r.runtime == "onnx":
            from engine.onnx_models import OnnxCrossEncoder

            return OnnxCrossEncoder(path, trained_max_length(path), r.batch_size, r.teacher_quantize)
        return CrossEncoder.load(path, batch_size=r.batch_size, device=r.device)

    def teacher_scores(self, query: str, rows: np.ndarray) -> np.ndarray:
        """The teacher's scores of ``query`` against the titles of product ``rows``."""
        rows = np.asarray(rows)
        return self.teacher().predict([query] * len(rows), self.bm25.products.titles.take(rows))

    # -- final ranker ------------------------------------------------------------------------------------------
    def ranker(self):
        """The learned final ranker (``rerank.ranker``), loaded once; None when the config names none."""
        if self.ranker_model is None and self.cfg.rerank.ranker:
            with self._lock:
                if self.ranker_model is None:
                    ranker = self._load_ranker()
                    self.query_clicks_model = self._query_clicks_of(ranker)
                    self.ranker_model = ranker
        return self.ranker_model

    def _query_clicks_of(self, ranker):
        if not ranker.reads("query_ctr"):
            return None
        from engine.query_clicks import QueryClicks

        return QueryClicks.load(ranker.path, self.bm25.products.row_map())

    def reload_query_clicks(self) -> None:
        """Read the query clicks again after a forget rewrote them (the ranker itself is unchanged, so its
        signature is taken as it is now rather than reloading it)."""
        from engine.ranker import Ranker

        with self._lock:
            if self.ranker_model is not None:
                self.ranker_model.signature = Ranker.file_signature(self.ranker_model.path)
                self.query_clicks_model = self._query_clicks_of(self.ranker_model)
            if self.candidate_model is not None:
                ranker = self.candidate_model[0]
                ranker.signature = Ranker.file_signature(ranker.path)
                self.candidate_model = (ranker, self._query_clicks_of(ranker))

    def query_clicks(self, variant: str | None = None):
        """The ranker's ``query_ctr`` snapshot (``query_clicks.npz`` beside it), or None; ``variant``
        ``"candidate"``: the experiment candidate's."""
        if variant == "candidate":
            return self.candidate()[1]
        self.ranker()
        return self.query_clicks_model

    def candidate(self) -> tuple:
        """The online experiment's candidate ranker (``serve.interleave.candidate``) and its query clicks."""
        if self.candidate_model is None:
            path = self.cfg.serve.interleave.candidate
            if not path:
                raise ValueError(f"{self.cfg.source or self.cfg.name}: serve.interleave.candidate is not set")
            with self._lock:
                if self.candidate_model is None:
                    from engine.ranker import Ranker

                    p = Path(path) if Path(path).is_absolute() else self.cfg.root / path
                    old = self._previous.candidate_model if self._previous is not None else None
                    ranker = old[0] if old is not None and old[0].signature == Ranker.file_signature(p) else None
                    ranker = ranker or Ranker.load(p)
                    self._check_features(ranker, p)
                    self.candidate_model = (ranker, self._query_clicks_of(ranker))
        return self.candidate_model

    def _load_ranker(self):
        from engine.ranker import Ranker

        path = Path(self.cfg.rerank.ranker)
        path = path if path.is_absolute() else self.cfg.root / path
        old = self._previous.ranker_model if self._previous is not None else None
        ranker = old if old is not None and old.signature == Ranker.file_signature(path) else Ranker.load(path)
        trained_on = ranker.card.get("cross_encoder", {}).get("fingerprint")
        ce = self.cross_encoder()
        if trained_on and trained_on != ce.fingerprint():
            raise ModelMismatchError(
                f"ranker {path} was trained on the scores of cross-encoder "
                f"{ranker.card['cross_encoder'].get('path')}, not on rerank.model {self.cfg.rerank.model}; "
                "retrain it with `make finetune` (python -m finetune --stages ranker)"
            )
        self._check_features(ranker, path)
        return ranker

    def _check_features(self, ranker, path: Path) -> None:
        """Refuse a ranker whose features this config computes otherwise: stage scores looked up at another
        ``rerank.lookup_depth``, or the zero-shot encoder's (``rerank.base_cosine``) where they are not computed."""
        from engine.features import BASE

        lookup = ranker.card.get("candidates", {}).get("lookup_depth", 0)  # rankers from before it: 0
        if lookup != self.cfg.rerank.lookup_depth:
            raise ModelMismatchError(
                f"ranker {path} learnt from stage scores looked up {lookup or 'rerank.depth'} deep, not "
                f"rerank.lookup_depth {self.cfg.rerank.lookup_depth}; retrain it with `make finetune` "
                "(python -m finetune --stages ranker)"
            )
        base = [f for f in BASE if f in ranker.features]
        if base and not self.cfg.rerank.base_cosine:
            raise ModelMismatchError(
                f"ranker {path} reads {base}, computed only with rerank.base_cosine: true; set it or retrain the "
                "ranker with `make finetune` (python -m finetune --stages ranker)"
            )

    # -- what answers ------------------------------------------------------------------------------------------
    def loaded(self) -> tuple:
        """Which parts are loaded now (the key :meth:`IndexVersion.versions` is cached under)."""
        return (
            tuple(self.dense),
            self.cross_encoder_model is not None,
            self.ranker_model is not None,
            self.candidate_model is not None,
            self.teacher_model is not None,
        )

    def ready(self) -> dict[str, bool]:
        """Per model the config serves with: whether it is loaded (the service's readiness check)."""
        cfg = self.cfg
        return {
            "dense": "dense" not in cfg.search.stages or "dense" in self.dense,
            "cross_encoder": not cfg.rerank.model or self.cross_encoder_model is not None,
            "ranker": not cfg.rerank.ranker or self.ranker_model is not None,
            "teacher": not cfg.rerank.teacher or self.teacher_model is not None,
        }

    def describe(self) -> dict[str, str]:
        """The loaded models' builds and fingerprints (part of :meth:`IndexVersion.versions`)."""
        v = {}
        for stage, (enc, index) in sorted(self.dense.items()):
            v[stage] = str(index.manifest.get("build_id", ""))
            v[f"{stage}_encoder"] = f"{Path(str(enc.describe()['model'])).name}@{enc.fingerprint}"
        if self.cross_encoder_model is not None:
            ce = self.cross_encoder_model
            v["cross_encoder"] = f"{Path(ce.path).name}@{ce.fingerprint()} ({ce.runtime})"
        if self.ranker_model is not None:
            v["ranker"] = f"{self.ranker_model.path.name}@{self.ranker_model.version}"
        if self.teacher_model is not None:
            t = self.teacher_model
            v["teacher"] = f"{Path(t.path).name}@{t.fingerprint()} ({t.runtime}, top {self.cfg.rerank.teacher_top})"
        if self.candidate_model is not None:
            v["candidate_ranker"] = f"{self.candidate_model[0].path.name}@{self.candidate_model[0].version}"
        return v

    def stale(self) -> bool:
        """Whether a dense build was swapped in or a loaded model's files changed since these were opened."""
        from indexer.dense import stage_index_dir

        cfg = self.cfg
        for stage, (enc, index) in list(self.dense.items()):
            folder = stage_folder(cfg.index_dir, stage_index_dir(cfg, stage).name)
            if build_id(folder) != index.manifest.get("build_id"):
                return True
            if enc.fingerprint != encoder_fingerprint(cfg, stage):
                return True
        ce = self.cross_encoder_model
        for m in (ce, self.teacher_model):
            if m is not None and m.fingerprint() != model_fingerprint(Path(m.path), m.max_length):
                return True
        if self.ranker_model is not None:
            from engine.ranker import Ranker

            if self.ranker_model.signature != Ranker.file_signature(self.ranker_model.path):
                return True
        if self.candidate_model is not None:
            from engine.ranker import Ranker

            if self.candidate_model[0].signature != Ranker.file_signature(self.candidate_model[0].path):
                return True
        return False


def build_id(folder: Path) -> str | None:
    """The build id in a stage folder's manifest (None: no readable manifest)."""
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("build_id")
    except (OSError, ValueError):
        return None


def encoder_fingerprint(cfg: Config, stage: str) -> str:
    from indexer.dense import stage_model

    return model_fingerprint(Path(stage_model(cfg, stage)), cfg.dense.max_length)


def same_runtime(ce, r, quantize: str | None = None, max_length: int | None = -1) -> bool:
    """Whether a loaded cross-encoder runs as the config's ``rerank`` section says (``quantize``/``max_length``
    other than the section's: the cascade teacher's own; ``max_length`` None: any)."""
    wanted = "torch" if r.runtime == "torch" else f"onnx-{quantize or r.quantize}"
    length = r.max_length if max_length == -1 else max_length
    return ce.runtime == wanted and (length is None or length == ce.max_length)


def query_encoder(cfg: Config, stage: str):
    """The encoder a dense stage embeds queries with: torch (the index job's encoder) or, with
    ``dense.query_runtime: onnx``, its ONNX export (same fingerprint: the same model) for the ``dense`` stage, and
    for ``dense-base`` where every query encodes with it too (``rerank.base_cosine``)."""
    from indexer.dense import dense_encoder, stage_model

    d = cfg.dense
    on_query_path = stage == "dense" or (stage == "dense-base" and cfg.rerank.base_cosine)
    if on_query_path and d.query_runtime == "onnx":
        from engine.onnx_models import OnnxQueryEncoder

        path = Path(stage_model(cfg, stage))
        return OnnxQueryEncoder(path, d.max_length, model_fingerprint(path, d.max_length), d.query_quantize)
    return dense_encoder(cfg, stage)
