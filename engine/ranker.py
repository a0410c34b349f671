"""The learned final ranker: a LightGBM LambdaRank model over :mod:`engine.features`, loaded and applied.

A ranker folder (``models/<config>/ranker/``, written by ``finetune.ranker``)
holds ``model.txt`` (the LightGBM booster), ``features.json`` (the feature
names it reads, in order) and ``model_card.json``.

The personalization knob: with ``f`` the model, ``x`` a candidate's features
and ``x₀`` the same features with the personal ones set to a cold user's
(:data:`engine.features.COLD`), the final score is
``f(x₀) + personalize · (f(x) − f(x₀))``.  ``personalize = 0``, a user with
no profile and no user at all therefore give exactly the non-personalized
ranking ``f(x₀)``; ``1`` gives the model's full personal score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.features import COLD, FEATURES, PERSONAL
from indexer.encoder import ModelMissingError

MODEL_FILE = "model.txt"
FEATURES_FILE = "features.json"


class Ranker:
    def __init__(self, booster, features: list[str], card: dict | None = None):
        unknown = [f for f in features if f not in FEATURES]
        if unknown:
            raise ValueError(f"ranker reads unknown feature(s) {unknown}; this engine computes {list(FEATURES)}")
        self.booster = booster
        self.features = list(features)
        self.cols = np.array([FEATURES.index(f) for f in features])
        self.personal_cols = np.array([i for i, f in enumerate(features) if f in PERSONAL], dtype=np.int64)
        self.cold = np.array([COLD[PERSONAL.index(features[i])] for i in self.personal_cols])
        self.card = card or {}
        self.path = Path(".")
        self.signature: tuple = ()

    @staticmethod
    def file_signature(path: str | Path) -> tuple:
        """(size, mtime, sha-256 prefix) of the model file: what tells a reload that the ranker changed."""
        import hashlib

        f = Path(path) / MODEL_FILE
        if not f.is_file():
            return ()
        st = f.stat()
        return (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest()[:12])

    @property
    def uses_personal(self) -> bool:
        return len(self.personal_cols) > 0

    @classmethod
    def load(cls, path: str | Path) -> "Ranker":
        import lightgbm as lgb

        p = Path(path)
        if not (p / MODEL_FILE).is_file():
            raise ModelMissingError(f"ranker {p} not found; train it with `make finetune`")
        features = json.loads((p / FEATURES_FILE).read_text(encoding="utf-8"))["features"]
        card_path = p / "model_card.json"
        card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
        signature = cls.file_signature(p)
        ranker = cls(lgb.Booster(model_file=str(p / MODEL_FILE)), features, card)
        ranker.path, ranker.signature = p, signature
        return ranker

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(p / MODEL_FILE))
        (p / FEATURES_FILE).write_text(json.dumps({"features": self.features, "personal": [
            f for f in self.features if f in PERSONAL]}, indent=1), encoding="utf-8")
        (p / "model_card.json").write_text(json.dumps(self.card, indent=1, ensure_ascii=False, default=str),
                                           encoding="utf-8")

    def score(self, X: np.ndarray, personalize: float = 1.0, warm: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(final scores, non-personal scores ``f(x₀)``) of one query's candidates."""
        if not 0.0 <= personalize <= 1.0:
            raise ValueError(f"personalize must be within [0, 1], got {personalize}")
        Z = X[:, self.cols]
        cold = Z.copy()
        if len(self.personal_cols):
            cold[:, self.personal_cols] = self.cold
        if not warm or personalize == 0.0 or not len(self.personal_cols) or len(X) == 0:
            base = self._predict(cold)
            return base, base
        both = self._predict(np.vstack([cold, Z]))
        base, full = both[: len(X)], both[len(X):]
        return base + personalize * (full - base), base

    def _predict(self, Z: np.ndarray) -> np.ndarray:
        if len(Z) == 0:
            return np.zeros(0)
        return np.asarray(self.booster.predict(np.ascontiguousarray(Z), num_threads=1), dtype=np.float64)
