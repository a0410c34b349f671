"""The learned final ranker: a LightGBM LambdaRank model over :mod:`engine.features`, loaded and applied.

A ranker folder (``models/<config>/ranker/``, written by ``finetune.ranker``)
holds ``model.txt`` (the LightGBM booster), ``features.json`` (the feature
names it reads, in order) and ``model_card.json``; a staged ranker also
``personal.txt``: a second booster over the personal features only, trained
on top of the first (its scores as the starting point), so the model is
``f(x) = g(non-personal) + s · h(personal)``, ``s`` the share of ``h`` the
held-out sessions vouch for (``personal_scale`` in ``features.json``).  A
ranker without ``personal.txt`` is one booster over all its features.

A ranker retrained on the service's own traffic (``make retrain``, warm start) adds boosters on top:
``delta-<i>.txt``, each over non-personal features only (``deltas`` in ``features.json``), boosted from the
scores of the ranker before it, so the model is ``f(x) + Σ δ_i(x)``; the ``δ`` read no personal feature, so
they shift the personal and the non-personal score alike.

A ranker may hold a taste model too (``taste.json``, :mod:`engine.taste`, fitted by ``finetune.taste_fit``):
then a warm user's full score is ``r⁻¹(logit E[σ(r(f(x₀)) + Σ_f θ_f)]) + s · (h(x) − h(x₀))`` — the non-personal
score mapped to the log-odds of a click, the user's taste for each of the candidate's facet values added on that
scale (the expected click chance under the values' posteriors), mapped back, and the personal booster's part
(fitted on top of the taste model, over what it does not read) added.
``make retrain``'s delta boosters keep it; its ship guard compares rankings without it.

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
PERSONAL_FILE = "personal.txt"
# inputs a model is trained with but that serving does not know, and the value serving gives them: the
# logged position (finetune.ranker's position-bias term, additive: the same shift for every candidate)
TRAINING_ONLY = {"position": 0.0}
FEATURES_FILE = "features.json"
MIX_FILE = "mix.json"  # a ranker whose base is the z-score mix, not a booster (a retrain's first delta on it)


class Ranker:
    def __init__(
        self,
        booster,
        features: list[str],
        card: dict | None = None,
        personal=None,
        personal_features: list[str] | None = None,
        personal_scale: float = 1.0,
    ):
        unknown = [f for f in features if f not in FEATURES and f not in TRAINING_ONLY]
        if unknown:
            raise ValueError(f"ranker reads unknown feature(s) {unknown}; this engine computes {list(FEATURES)}")
        self.booster = booster  # None: the z-score mix of mix_weight is the base score
        self.mix_weight: float | None = None
        self.features = list(features)
        known = [i for i, f in enumerate(features) if f in FEATURES]
        self.cols = np.array([FEATURES.index(features[i]) for i in known])
        self.known = np.array(known, dtype=np.int64)  # where the engine's features go in the model's input
        self.constants = [(i, TRAINING_ONLY[f]) for i, f in enumerate(features) if f in TRAINING_ONLY]
        self.personal_cols = np.array([i for i, f in enumerate(features) if f in PERSONAL], dtype=np.int64)
        self.cold = np.array([COLD[PERSONAL.index(features[i])] for i in self.personal_cols])
        # the staged form: h over personal features only, added to the booster's score
        self.personal = personal
        self.personal_features = list(personal_features or [])
        bad = [f for f in self.personal_features if f not in PERSONAL]
        if bad or (personal is not None and not self.personal_features):
            raise ValueError(f"a personal booster reads personal features only, not {bad or 'none'}")
        self.h_cols = np.array([FEATURES.index(f) for f in self.personal_features], dtype=np.int64)
        self.h_cold = np.array([COLD[PERSONAL.index(f)] for f in self.personal_features])
        # how much of h the held-out sessions vouch for (finetune.ranker: 1 − 1/z²)
        self.personal_scale = float(personal_scale)
        self.card = card or {}
        self.path = Path(".")
        self.signature: tuple = ()
        self.deltas: list[tuple] = []  # (booster, feature names, column spec) added on top, oldest first
        self._no_evidence: dict[int, float] = {}  # a delta booster's score of a row whose features are all 0
        self.taste = None  # an engine.taste.TasteModel, or None

    @classmethod
    def mix(cls, weight: float, card: dict | None = None) -> "Ranker":
        """The z-score mix ``weight · z(cross-encoder) + (1 − weight) · z(first stage)`` as a ranker: what a shop
        without a learned ranker serves, and the base a retrain's delta boosters go on."""
        r = cls(None, ["ce", "first_stage"], card or {"model": f"the z-score mix, weight {weight}"})
        r.mix_weight = float(weight)
        return r

    def with_delta(self, booster, features: list[str], card: dict) -> "Ranker":
        """This ranker plus ``booster`` over ``features`` (non-personal or training-only) added to its score."""
        bad = [f for f in features if f in PERSONAL or (f not in FEATURES and f not in TRAINING_ONLY)]
        if bad:
            raise ValueError(f"a delta booster reads non-personal features only, not {bad}")
        out = Ranker(
            self.booster, self.features, card, self.personal, self.personal_features or None, self.personal_scale
        )
        out.mix_weight = self.mix_weight
        out.taste = self.taste
        out.deltas = [*self.deltas, (booster, list(features), self._columns(features))]
        return out

    @staticmethod
    def _columns(features: list[str]) -> tuple:
        known = [i for i, f in enumerate(features) if f in FEATURES]
        cols = np.array([FEATURES.index(features[i]) for i in known])
        consts = [(i, TRAINING_ONLY[f]) for i, f in enumerate(features) if f in TRAINING_ONLY]
        return np.array(known, dtype=np.int64), cols, consts

    def delta_score(self, X: np.ndarray) -> np.ndarray:
        """The summed scores of the delta boosters (0 without any), each less its score of a row with no
        evidence (every feature 0): a candidate without query clicks gets exactly 0, so a query without traffic
        keeps its base scores bit for bit (a shared constant would shift them alike, but rounding would break
        the base ranker's exact ties differently)."""

        def inputs(rows: np.ndarray, features, known, cols, consts) -> np.ndarray:
            Z = np.empty((len(rows), len(features)))
            Z[:, known] = rows[:, cols]
            for i, v in consts:
                Z[:, i] = v
            return Z

        out = np.zeros(len(X))
        for booster, features, spec in self.deltas:
            zero = self._no_evidence.get(id(booster))
            if zero is None:
                none = inputs(np.zeros((1, X.shape[1])), features, *spec)
                zero = self._no_evidence[id(booster)] = float(self._predict(booster, none)[0])
            out += self._predict(booster, inputs(X, features, *spec)) - zero
        return out

    @staticmethod
    def file_signature(path: str | Path) -> tuple:
        """(size, mtime, sha-256 prefix) of the model files (and the staged scale): what tells a reload that the
        ranker changed."""
        import hashlib

        p = Path(path)
        if not (p / MODEL_FILE).is_file() and not (p / MIX_FILE).is_file():
            return ()
        out: tuple = ()  # model.txt's (or mix.json's) (size, mtime, sha) first: [2] names the model in versions()
        extra = [p / "query_clicks.npz", p / "taste.json", *sorted(p.glob("delta-*.txt"))]
        for f in [p / MODEL_FILE, p / MIX_FILE, p / PERSONAL_FILE, p / FEATURES_FILE, *extra]:
            if f.is_file():
                st = f.stat()
                out += (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest()[:12])
        return out

    @property
    def version(self) -> str:
        """The model's files in short: model.txt's hash, and the number and last hash of the delta boosters."""
        if not self.signature:
            return "unsaved"
        return self.signature[2] + (f"+{len(self.deltas)}d@{self.signature[-1]}" if self.deltas else "")

    def reads(self, feature: str) -> bool:
        """Whether the model (or a delta booster) reads ``feature``."""
        return feature in self.features or any(feature in f for _, f, _ in self.deltas)

    @property
    def uses_personal(self) -> bool:
        return len(self.personal_cols) > 0 or self.personal is not None or self.taste is not None

    @classmethod
    def load(cls, path: str | Path) -> "Ranker":
        import lightgbm as lgb

        p = Path(path)
        if not (p / MODEL_FILE).is_file() and not (p / MIX_FILE).is_file():
            raise ModelMissingError(f"ranker {p} not found; train it with `make finetune`")
        spec = json.loads((p / FEATURES_FILE).read_text(encoding="utf-8"))
        features = spec["features"]
        card_path = p / "model_card.json"
        card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
        signature = cls.file_signature(p)
        personal = lgb.Booster(model_file=str(p / PERSONAL_FILE)) if (p / PERSONAL_FILE).is_file() else None
        mix = None if (p / MODEL_FILE).is_file() else json.loads((p / MIX_FILE).read_text(encoding="utf-8"))
        ranker = cls(
            lgb.Booster(model_file=str(p / MODEL_FILE)) if mix is None else None,
            features,
            card,
            personal,
            spec.get("personal_model") if personal is not None else None,
            spec.get("personal_scale", 1.0),
        )
        if mix is not None:
            ranker.mix_weight = float(mix["weight"])
        for d in spec.get("deltas", []):
            ranker.deltas.append(
                (lgb.Booster(model_file=str(p / d["file"])), d["features"], cls._columns(d["features"]))
            )
        from engine.taste import TasteModel

        ranker.taste = TasteModel.load(p)
        ranker.path, ranker.signature = p, signature
        return ranker

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        if self.booster is None:
            (p / MODEL_FILE).unlink(missing_ok=True)
            (p / MIX_FILE).write_text(json.dumps({"weight": self.mix_weight}), encoding="utf-8")
        else:
            (p / MIX_FILE).unlink(missing_ok=True)
            self.booster.save_model(str(p / MODEL_FILE))
        spec = {"features": self.features, "personal": [f for f in self.features if f in PERSONAL]}
        if self.personal is not None:
            self.personal.save_model(str(p / PERSONAL_FILE))
            spec["personal_model"] = self.personal_features
            spec["personal_scale"] = self.personal_scale
        else:
            (p / PERSONAL_FILE).unlink(missing_ok=True)
        for f in p.glob("delta-*.txt"):
            f.unlink()
        if self.deltas:
            spec["deltas"] = []
            for i, (booster, features, _) in enumerate(self.deltas, 1):
                booster.save_model(str(p / f"delta-{i}.txt"))
                spec["deltas"].append({"file": f"delta-{i}.txt", "features": features})
        (p / FEATURES_FILE).write_text(json.dumps(spec, indent=1), encoding="utf-8")
        if self.taste is not None:
            self.taste.save(p)
        else:
            (p / "taste.json").unlink(missing_ok=True)
        (p / "model_card.json").write_text(
            json.dumps(self.card, indent=1, ensure_ascii=False, default=str), encoding="utf-8"
        )

    def score(
        self, X: np.ndarray, personalize: float = 1.0, warm: bool = True, evidence: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(final scores, non-personal scores ``f(x₀)``) of one query's candidates; ``evidence``: the user's taste
        evidence of each candidate (:func:`engine.taste.evidence_rows`), read when the ranker has a taste model."""
        taste = self.taste is not None and warm and personalize > 0 and evidence is not None and evidence.any()
        full, base = self._score(X, 1.0 if taste else personalize, warm)
        if self.deltas and len(X):
            d = self.delta_score(X)
            full, base = full + d, base + d
        if taste:
            # r⁻¹(logit E[σ(r(f(x₀)) + Σθ)]) + s · (h(x) − h(x₀)), then the knob: base + personalize · (that − base)
            x = self.taste.relevance_logit(base)
            t = self.taste.expected_logit(x, evidence) - x
            # a candidate the shopper's history says nothing about keeps its score bit for bit
            tasted = np.where(t != 0, self.taste.score_of_logit(x + t), base)
            full = base + personalize * (tasted + (full - base) - base)
        return full, base

    def _score(self, X: np.ndarray, personalize: float, warm: bool) -> tuple[np.ndarray, np.ndarray]:
        if self.booster is None:  # the z-score mix over one query's candidates
            from engine.rerank import combine

            ce, first = X[:, FEATURES.index("ce")], X[:, FEATURES.index("first_stage")]
            base = combine(ce, first, self.mix_weight) if len(X) else np.zeros(0)
            return base, base
        if not 0.0 <= personalize <= 1.0:
            raise ValueError(f"personalize must be within [0, 1], got {personalize}")
        if self.constants:
            Z = np.empty((len(X), len(self.features)))
            Z[:, self.known] = X[:, self.cols]
            for i, v in self.constants:
                Z[:, i] = v
        else:
            Z = X[:, self.cols]
        cold = Z.copy()
        if len(self.personal_cols):
            cold[:, self.personal_cols] = self.cold
        off = not warm or personalize == 0.0 or not self.uses_personal or len(X) == 0
        if self.personal is not None:  # staged: g(x₀) + personalize · (h(x) − h(x₀))
            base = self._predict(self.booster, cold)
            if off:
                return base, base
            H = X[:, self.h_cols]
            h = self._predict(self.personal, np.vstack([np.broadcast_to(self.h_cold, H.shape), H]))
            return base + personalize * self.personal_scale * (h[len(X) :] - h[: len(X)]), base
        if off:
            base = self._predict(self.booster, cold)
            return base, base
        both = self._predict(self.booster, np.vstack([cold, Z]))
        base, full = both[: len(X)], both[len(X) :]
        return base + personalize * (full - base), base

    @staticmethod
    def _predict(booster, Z: np.ndarray) -> np.ndarray:
        if len(Z) == 0:
            return np.zeros(0)
        return np.asarray(booster.predict(np.ascontiguousarray(Z), num_threads=1), dtype=np.float64)
