"""Fit the taste click model (:mod:`engine.taste`) on logged sessions, and decide whether it ships.

Rows: every shown product of every logged session (clicked or not, sessions without a click included), with its
rank, whether it was clicked, the ranker's score as served (point-in-time features) and the user's taste evidence
as of the session's start (:class:`TasteRows`, collected while :func:`finetune.ranker_sessions.build_dataset`
replays the log).  Then:

1. **examination and relevance**: ``P(click) = e_k · σ(r(s))`` by maximum likelihood (L-BFGS), ``e`` per rank
   bucket (the top fixed at 1), ``r`` increasing and piecewise linear over quantile knots of the score ``s``;
   ``a_k(θ)`` = the mean ``σ(r(s) + θ)`` of what bucket ``k`` showed, at each θ of the grid;
2. **priors**: per facet, the nonparametric maximum-likelihood prior of θ over every (user, value) evidence of
   the users' profiles at the end of the log (:func:`engine.taste.fit_prior`);
3. **the check**: on the last ``valid_fraction`` of the sessions, each session's click log-likelihood with
   the tastes (the posterior-predictive ``E[σ(r(s) + Σ θ)]``; evidence as of the session, priors fitted on the
   *other* half of the users) against without, first
   for each facet alone: a facet is kept when its z exceeds ``personal_min_z``, and the model ships when it keeps
   one — a log without taste (or too little of it) gets no taste model, and personalization stays exactly what
   the ranker alone gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.profiles import FACETS
from engine.taste_counts import COUNTS_WIDTH
from engine.taste import GRID, N_BUCKETS, ZERO, TasteModel, evidence_rows, fit_prior, rank_bucket

N_KNOTS = 8


@dataclass
class TasteRows:
    """The shown products of logged sessions, collected during the point-in-time replay."""

    facets: object
    half_life: float
    X: list = field(default_factory=list)
    rank: list = field(default_factory=list)
    clicked: list = field(default_factory=list)
    evidence: list = field(default_factory=list)
    session: list = field(default_factory=list)  # index of the row's session in the sessions list
    users: dict = field(default_factory=dict)  # session index -> user key

    def __call__(self, i: int, s, cand, X: np.ndarray, pit) -> None:
        seen = np.isin(cand.rows, s.shown)
        if not seen.any():
            return
        where = {r: j for j, r in enumerate(s.shown)}
        rows = cand.rows[seen]
        prof = pit.profiles.get(s.user) if (pit is not None and s.user is not None) else None
        self.X.append(X[seen].astype(np.float32))  # compact: a big log's every shown product is kept
        self.rank.append(np.array([s.offset + where[int(r)] + 1 for r in rows], dtype=np.int64))
        self.clicked.append(np.array([s.gains.get(int(r), 0.0) > 0 for r in rows], dtype=bool))
        ev = evidence_rows(prof, self.facets, rows, s.t, self.half_life)
        if not ev[..., COUNTS_WIDTH:].any():  # no relevance logged: the counts alone (a third of the memory)
            ev = ev[..., :COUNTS_WIDTH]
        self.evidence.append(ev.astype(np.float16))
        self.session.append(np.full(len(rows), i, dtype=np.int64))
        self.users[i] = s.user

    def arrays(self):
        cat = np.concatenate
        width = max(e.shape[-1] for e in self.evidence)
        pad = lambda e: e if e.shape[-1] == width else np.pad(e, ((0, 0), (0, 0), (0, width - e.shape[-1])))  # noqa: E731
        ev = cat([pad(e) for e in self.evidence])
        return cat(self.X), cat(self.rank), cat(self.clicked), ev, cat(self.session)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rank)


def fit_relevance(score: np.ndarray, bucket: np.ndarray, clicked: np.ndarray) -> tuple:
    """(examination per bucket, knots, logits at the knots) by maximum likelihood of ``e_k σ(r(s))``."""
    from scipy.optimize import minimize

    knots = np.unique(np.quantile(score, np.linspace(0.0, 1.0, N_KNOTS)))
    if len(knots) < 2:
        knots = np.array([score.min() - 0.5, score.max() + 0.5])
    k = len(knots)
    idx = np.clip(np.searchsorted(knots, score, side="right") - 1, 0, k - 2)
    frac = np.clip((score - knots[idx]) / (knots[idx + 1] - knots[idx]), 0.0, 1.0)
    y = clicked.astype(np.float64)

    def unpack(p):
        eta = np.concatenate([[20.0], p[: N_BUCKETS - 1]])
        logits = p[N_BUCKETS - 1] + np.concatenate([[0.0], np.cumsum(np.exp(p[N_BUCKETS:]))])
        return 1.0 / (1.0 + np.exp(-eta)), logits

    def nll(p):
        e, logits = unpack(p)
        x = logits[idx] + frac * (logits[idx + 1] - logits[idx])
        prob = np.clip(e[bucket] / (1.0 + np.exp(-x)), 1e-9, 1 - 1e-9)
        return -float(np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob)))

    p0 = np.concatenate([np.zeros(N_BUCKETS - 1), [-2.0], np.full(k - 1, np.log(2.0 / (k - 1)))])
    res = minimize(nll, p0, method="L-BFGS-B", options={"maxiter": 500})
    e, logits = unpack(res.x)
    return e, knots, logits


def bucket_attraction(x: np.ndarray, bucket: np.ndarray) -> np.ndarray:
    """``[N_BUCKETS, len(GRID)]``: the mean of σ(x + θ) over the impressions of each rank bucket, at each θ of the
    grid — the click chance, once examined, of a value shown there, with the relevance of what the bucket shows
    integrated out instead of set to its mean (σ of the mean logit would shrink every taste toward 0: a logistic
    model that leaves out its impressions' spread in relevance underestimates every effect).  Empty buckets take
    every impression's mean."""
    counts = np.bincount(bucket, minlength=N_BUCKETS).astype(np.float64)
    out = np.empty((N_BUCKETS, len(GRID)))
    for j, theta in enumerate(GRID):
        p = 1.0 / (1.0 + np.exp(-(x + theta)))
        mean = np.bincount(bucket, weights=p, minlength=N_BUCKETS) / np.maximum(counts, 1.0)
        out[:, j] = np.where(counts > 0, mean, p.mean() if len(p) else 0.5)
    return np.clip(out, 1e-4, 1 - 1e-4)


def profile_evidence(profiles: dict, users: set | None = None) -> dict[str, np.ndarray]:
    """Per facet: every (user, value) evidence row of ``profiles`` (of ``users`` only, when given)."""
    out: dict[str, list] = {f: [] for f in FACETS}
    for u, p in profiles.items():
        if users is not None and u not in users:
            continue
        for f, values in p.taste.items():
            if f in out:
                out[f] += list(values.values())
    return {f: np.asarray(v, dtype=np.float64) for f, v in out.items() if v}


def fit_priors(model: TasteModel, evidence: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each facet's prior, fitted on the values' counts alone (impressions and clicks per rank bucket, relevance
    integrated out by the bucket's table): fitted on the likelihood that reads each logged relevance too, the
    priors come out narrower and the lift on the simulated shoppers falls (docs/results.md, Personalization);
    the relevance sharpens each shopper's posterior, where the ranking reads it."""
    return {f: fit_prior(model.loglik(ev[..., :COUNTS_WIDTH])) for f, ev in evidence.items() if len(ev)}


def session_loglik(model: TasteModel, x: np.ndarray, bucket: np.ndarray, clicked: np.ndarray) -> np.ndarray:
    prob = np.clip(model.examination[bucket] / (1.0 + np.exp(-x)), 1e-9, 1 - 1e-9)
    return np.where(clicked, np.log(prob), np.log(1 - prob))


def fit_taste(ranker, rows: TasteRows, profiles: dict, valid_fraction: float, min_z: float, seed: int = 0):
    """(the taste model or None when it does not ship, the check for the model card)."""
    X, rank, clicked, evidence, session = rows.arrays()
    score = ranker.score(X.astype(np.float64), 0.0, warm=False)[1]  # the non-personal score f(x₀): taste adds to it
    bucket = rank_bucket(rank)
    e, knots, logits = fit_relevance(score, bucket, clicked)
    model = TasteModel(e, np.full(N_BUCKETS, 0.5), knots, logits)
    model = TasteModel(e, bucket_attraction(model.relevance_logit(score), bucket), knots, logits)
    # the check: the last sessions, priors from the other half of the users
    order = np.unique(session)
    n_valid = max(1, int(len(order) * valid_fraction))
    held = np.isin(session, order[-n_valid:])
    users = sorted({u for u in rows.users.values() if u is not None})
    half = set(np.random.default_rng(seed).permutation(users)[: len(users) // 2].tolist())
    base_x = model.relevance_logit(score)
    halves = []  # (held-out rows of the half's users, the priors from the other half)
    for part in (half, set(users) - half):
        sel = held & np.isin(session, [i for i, u in rows.users.items() if u in part])
        if sel.any():
            halves.append((sel, fit_priors(model, profile_evidence(profiles, set(users) - part))))

    def predicted(facets):  # the held-out rows' posterior-predictive click log-odds with the tastes of ``facets``
        x = base_x.copy()
        for sel, priors in halves:
            model.priors = {f: w for f, w in priors.items() if f in facets}
            x[sel] = model.expected_logit(base_x[sel], evidence[sel].astype(np.float64))
        return x

    _, inv = np.unique(session[held], return_inverse=True)
    base_ll = session_loglik(model, base_x, bucket, clicked)

    def z_of(x):
        per_session = np.bincount(inv, weights=(session_loglik(model, x, bucket, clicked) - base_ll)[held])
        se = float(per_session.std(ddof=1) / np.sqrt(len(per_session))) if len(per_session) > 1 else float("inf")
        return per_session, (float(per_session.mean() / se) if se > 0 and np.isfinite(se) else 0.0), se

    # a facet counts when its own taste predicts the held-out clicks better (one the shoppers have no taste for
    # — the simulated demo shoppers' categories — is left out)
    seen = [f for j, f in enumerate(FACETS) if any(f in pr and evidence[sel, j].any() for sel, pr in halves)]
    facet_z = {f: round(z_of(predicted({f}))[1], 2) for f in seen}
    kept = [f for f, z in facet_z.items() if z > min_z]
    per_session, z, se = z_of(predicted(set(kept)))
    model.priors = {f: w for f, w in fit_priors(model, profile_evidence(profiles)).items() if f in kept}
    spread = {f: round(float(np.sqrt(max(w @ GRID**2 - (w @ GRID) ** 2, 0.0))), 3) for f, w in model.priors.items()}
    check = {
        "rows": int(len(score)),
        "sessions": int(len(order)),
        "valid_sessions": int(len(per_session)),
        "loglik_gain_per_session": round(float(per_session.mean()) if len(per_session) else 0.0, 5),
        "se": round(se, 5) if np.isfinite(se) else None,
        "z": round(z, 2),
        "facet_z": facet_z,
        "facets": kept,
        "min_z": min_z,
        "kept": bool(kept) and bool(z > min_z),
        "examination": e.round(4).tolist(),
        "attraction": model.attraction[:, ZERO].round(4).tolist(),
        "prior_sd": spread,
    }
    model.card = check
    return (model if check["kept"] else None), check


# what the taste model already reads from a profile: the facet values' shares and click rates
FACET_FEATURES = tuple(f"{f}_{kind}" for f in FACETS for kind in ("aff", "ctr"))


def personal_on_taste(ranker, data, rows: TasteRows, tcfg):
    """The ranker with its personal booster ``h`` fitted again on top of ``g`` and the taste model, over the
    personal features the taste model does not read (the centroid, what was bought, the in-session profile), with
    the same cross-validated check (:func:`finetune.ranker_personal.fit_personal_cv`): ``h`` ships only where it
    still adds.  ``data``: the ranker's dataset, whose rows are ``rows``' rows of its sessions, in order."""
    from engine.features import PERSONAL
    from engine.ranker import Ranker
    from finetune.ranker_personal import fit_personal_cv, shrinkage

    _, _, _, evidence, session = rows.arrays()
    ev = evidence[np.isin(session, data.sessions)].astype(np.float64)
    if len(ev) != len(data.y):
        raise ValueError(f"taste rows ({len(ev)}) and the ranker's dataset ({len(data.y)}) do not line up")
    base = ranker.score(data.X, 0.0, warm=False)[1]
    taste = ranker.taste
    x = taste.relevance_logit(base)
    data.offset = taste.score_of_logit(taste.expected_logit(x, ev)) - base
    names = [f for f in PERSONAL if f not in FACET_FEATURES]
    h, _, check = fit_personal_cv(ranker.booster, data, tcfg, names)
    data.offset = None
    check["min_z"] = tcfg.personal_min_z
    check["scale"] = shrinkage(check, tcfg.personal_min_z)
    check["kept"] = check["scale"] > 0
    check["on_taste"] = True
    card = {
        **ranker.card,
        "personal_check": check,
        "form": "g(non-personal) + taste" + (" + h" if check["kept"] else ""),
    }
    kept = check["kept"]
    card["personal_features"] = names if kept else []
    out = Ranker(
        ranker.booster, ranker.features, card, h if kept else None, names if kept else None, check["scale"] or 1.0
    )
    out.taste = taste
    return out
