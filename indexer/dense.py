"""The dense index: product vectors from the bi-encoder in a FAISS index.

Built from a FAISS index-factory string (``Flat``, ``HNSW32``,
``IVF4096,PQ32``, ...) with inner product on normalized vectors, wrapped in
an ``IndexIDMap2`` so that FAISS ids are product rows.  A filter (one bool
per product) becomes an ``IDSelectorBitmap`` inside the FAISS search, so a
filtered query still gets its k best allowed products.  With ``faiss-gpu``
and a CUDA device the index is searched on the GPU(s); otherwise on the CPU,
with no change by the user.

The manifest records the encoder's fingerprint (model files' hash, max
length); loading the index for a different encoder fails instead of
returning nonsense.

Beside the FAISS index the folder keeps each product's vector (float16,
``vectors.npy``, by row: what user profiles average) and its **group**
(``groups.npy``): spherical k-means over the product vectors (FAISS
``Kmeans``, seeded), with the centroids in ``group_centroids.npy``.  For
catalogs with titles only, groups stand in for categories in
personalization.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np

from indexer.store import IndexLoadError, read_manifest, write_index
from core.types import DENSE_STAGES, SearchResult  # noqa: F401  (DENSE_STAGES re-exported)

KIND = "dense"
log = logging.getLogger(__name__)


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def n_groups(n_products: int, configured: int = 0) -> int:
    """The number of k-means product groups: as configured, else about sqrt(n / 2) within 8..1024."""
    k = configured or int(np.clip(round(np.sqrt(n_products / 2)), 8, 1024))
    return max(1, min(k, n_products))


def product_groups(vectors: np.ndarray, k: int, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (FAISS) over normalized product vectors: (group per row int32, centroids [k, d])."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int32), np.zeros((0, x.shape[1] if x.ndim == 2 else 0), dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False, max_points_per_centroid=256)
    km.train(x)
    return assign_groups(x, km.centroids), np.asarray(km.centroids, dtype=np.float32)


def assign_groups(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid (inner product) of each vector."""
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.int32)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, g = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return g[:, 0].astype(np.int32)


class DenseIndex:
    def __init__(
        self,
        index: faiss.Index,
        encoder: dict,
        manifest: dict | None = None,
        nprobe: int = 32,
        ef_search: int = 128,
        vectors: np.ndarray | None = None,
        groups: np.ndarray | None = None,
        group_centroids: np.ndarray | None = None,
    ):
        self.index = index
        self.vectors = vectors  # [n, d] float16 by product row
        self.groups = groups  # [n] int32 by product row
        self.group_centroids = group_centroids
        self.encoder = encoder
        self.manifest = manifest or {}
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.n = int(index.ntotal)
        self.on_gpu = False
        self._search_index = index
        if gpu_count() > 0:
            self._to_gpu()

    def _to_gpu(self) -> None:
        try:
            self._search_index = faiss.index_cpu_to_all_gpus(self.index)
            if faiss.try_extract_index_ivf(
                self.index.index if isinstance(self.index, faiss.IndexIDMap) else self.index
            ):
                faiss.GpuParameterSpace().set_index_parameter(self._search_index, "nprobe", self.nprobe)
            self.on_gpu = True
        except Exception as e:  # e.g. HNSW has no GPU version: search it on the CPU
            log.info("dense index stays on the CPU: %s", e)
            self._search_index, self.on_gpu = self.index, False

    @staticmethod
    def build(vectors: np.ndarray, factory: str, rows: np.ndarray | None = None) -> faiss.Index:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = vectors.shape
        try:
            base = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"dense.factory {factory!r} is not a valid FAISS index factory string: {e}") from None
        index = faiss.IndexIDMap2(base)
        if not index.is_trained:
            ivf = faiss.try_extract_index_ivf(base) if hasattr(faiss, "try_extract_index_ivf") else None
            if ivf is not None and n < ivf.nlist:
                raise ValueError(
                    f"dense.factory {factory!r} needs at least {ivf.nlist} products to train, "
                    f"the catalog has {n}; use Flat or fewer lists"
                )
            index.train(vectors)
        ids = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        index.add_with_ids(vectors, ids)
        return index

    def _params(self, mask: np.ndarray | None):
        """Search parameters (nprobe / efSearch, and the mask as an id selector) plus the objects
        the selector points into, which must stay alive for the duration of the search."""
        sel, bits = None, None
        if mask is not None:
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        base = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap) else self.index
        if isinstance(base, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=self.ef_search), (sel, bits)
        if isinstance(base, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe), (sel, bits)
        return (faiss.SearchParameters(sel=sel) if sel is not None else None), (sel, bits)

    def search(self, qvecs: np.ndarray, k: int = 10, mask: np.ndarray | None = None) -> list[SearchResult]:
        """Top-k product rows for each query vector (rows of ``qvecs``)."""
        q = np.ascontiguousarray(np.atleast_2d(qvecs), dtype=np.float32)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape[0] < self.n:
                raise ValueError(f"mask must have one entry per product ({self.n}), got {mask.shape[0]}")
        k = min(k, self.n)
        if self.on_gpu and mask is None:
            D, I = self._search_index.search(q, k)  # nprobe was set when the index moved to the GPU
        else:
            params, _alive = self._params(mask)  # a filtered search runs on the CPU copy (selectors)
            D, I = self.index.search(q, k, params=params)
        out = []
        for d, i in zip(D, I):
            keep = i >= 0
            out.append(SearchResult(i[keep].astype(np.int64), d[keep].astype(np.float32)))
        return out

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        """Add products (new rows) without a rebuild; each joins its nearest existing group."""
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(rows, dtype=np.int64))
        self.n = int(self.index.ntotal)
        if self.vectors is not None:
            self.vectors = np.concatenate([np.asarray(self.vectors), np.asarray(vectors, dtype=np.float16)])
        if self.groups is not None and self.group_centroids is not None:
            self.groups = np.concatenate([np.asarray(self.groups), assign_groups(vectors, self.group_centroids)])
        if self.on_gpu:
            self._to_gpu()

    def save_to(self, folder: Path) -> dict:
        faiss.write_index(self.index, str(folder / "faiss.index"))
        np.save(folder / "vectors.npy", np.asarray(self.vectors, dtype=np.float16))
        np.save(folder / "groups.npy", np.asarray(self.groups, dtype=np.int32))
        np.save(folder / "group_centroids.npy", np.asarray(self.group_centroids, dtype=np.float32))
        return {
            "n_vectors": self.n,
            "encoder": self.encoder,
            "factory": self.manifest.get("factory"),
            "n_groups": int(len(self.group_centroids)),
        }

    @classmethod
    def load(
        cls, folder: Path, encoder_fingerprint: str | None, verify: bool = True, nprobe: int = 32, ef_search: int = 128
    ) -> "DenseIndex":
        folder = Path(folder)
        manifest = read_manifest(folder, KIND, verify=verify)
        built_with = manifest.get("encoder", {}).get("fingerprint")
        if encoder_fingerprint is not None and built_with != encoder_fingerprint:
            raise IndexLoadError(
                f"{folder}: built with encoder {built_with} "
                f"({manifest.get('encoder', {}).get('model')}), the config's encoder is "
                f"{encoder_fingerprint}: its vectors are not comparable; rebuild with `make index`"
            )
        index = faiss.read_index(str(folder / "faiss.index"))
        return cls(
            index,
            manifest["encoder"],
            manifest,
            nprobe,
            ef_search,
            vectors=np.load(folder / "vectors.npy", mmap_mode="r"),
            groups=np.load(folder / "groups.npy"),
            group_centroids=np.load(folder / "group_centroids.npy"),
        )


def stage_model(cfg, stage: str):
    """The model folder (or hub id) a dense stage encodes with (the trimmed copy where the config trims)."""
    from indexer.encoder import ModelMissingError, resolve_model

    d = cfg.dense
    model = resolve_model(d.model if stage == "dense" else d.base_model, cfg.root)
    if stage == "dense" and d.trim_vocab:
        from indexer.vocab_trim import trimmed_path

        path = trimmed_path(cfg)
        if not (path / "config.json").is_file():
            raise ModelMissingError(f"trimmed model {path} not built; `make index` builds it")
        return path
    return model


def dense_encoder(cfg, stage: str):
    """The encoder a dense stage embeds queries and titles with (the query path and the index job share it)."""
    from indexer.encoder import Encoder

    d = cfg.dense
    return Encoder(stage_model(cfg, stage), max_length=d.max_length, batch_size=d.batch_size, device=d.device)


def stage_index_dir(cfg, stage: str) -> Path:
    """Where a dense stage's index lives; ``dense-base`` shares ``dense``'s index when both use the same model."""
    from indexer.encoder import ModelMissingError

    if stage == "dense-base":
        try:
            same = str(stage_model(cfg, "dense-base")) == str(stage_model(cfg, "dense"))
        except ModelMissingError:  # the fine-tuned model is not trained yet: the base model has its own index
            same = False
        if same:
            stage = "dense"
    return cfg.index_dir / stage


def build_and_save(
    path: Path,
    texts: list[str],
    encoder,
    factory: str,
    config_hash: str,
    progress: bool = True,
    extras: dict | None = None,
    groups: int = 0,
    commit=None,
) -> tuple[dict, DenseIndex]:
    """Encode ``texts`` (one per product row), group them, and swap a new dense index in at ``path`` (with
    ``commit``, an :class:`indexer.store.IndexCommit`: when it switches, with the other stages it built)."""
    t0 = time.perf_counter()
    vecs = encoder.encode_passages(texts, progress=progress)
    t1 = time.perf_counter()
    index = DenseIndex.build(vecs, factory)
    t2 = time.perf_counter()
    k = n_groups(len(texts), groups)
    group_of, centroids = product_groups(vecs, k)
    t3 = time.perf_counter()
    dense = DenseIndex(
        index,
        encoder.describe(),
        {"factory": factory},
        vectors=vecs.astype(np.float16),
        groups=group_of,
        group_centroids=centroids,
    )
    extras = {
        **(extras or {}),
        "factory": factory,
        "groups_configured": groups,
        "encode_seconds": round(t1 - t0, 2),
        "build_seconds": round(t2 - t1, 2),
        "kmeans_seconds": round(t3 - t2, 2),
        "titles_per_second": round(len(texts) / max(t1 - t0, 1e-9), 1),
    }
    save = lambda folder: {**dense.save_to(folder), **extras}  # noqa: E731
    manifest = (
        commit.build(Path(path).name, save, KIND, config_hash)
        if commit is not None
        else write_index(path, save, KIND, config_hash)
    )
    dense.manifest = manifest
    return manifest, dense


def index_stages(cfg, extra: Iterable[str] = ()) -> list[str]:
    """The indexes a config needs: always bm25 (it holds the product table), plus its dense stages
    (``dense-base`` only where its model differs from ``dense``'s: otherwise they share one index), plus the
    query suggestions (``suggest.enabled``)."""
    stages = ["bm25"]
    for s in list(cfg.search.stages) + list(extra):
        s = "dense" if s in ("hybrid", "rerank") else s
        if s in DENSE_STAGES:
            stages.append(stage_index_dir(cfg, s).name)
    if cfg.rerank.base_cosine:  # the zero-shot encoder's vectors the base_cos ranker features read
        stages.append(stage_index_dir(cfg, "dense-base").name)
    if cfg.suggest.enabled or "suggest" in extra:
        stages.append("suggest")  # query suggestions: built from the bm25 stage of the same version
    return list(dict.fromkeys(stages))
