"""The config sections of the offline jobs (``finetune/``) and of evaluation (``eval/``): the shared training
loop, the bi-encoder, the cross-encoder, the final ranker, the evaluation queries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.config.loader import INDEXED_WHEN_SET, NOT_INDEXED, NOT_TRAINED, TRAINED_WHEN_SET  # noqa: F401


@dataclass
class TrainingLoopConfig:
    """What the shared training loop (finetune.loop) reads: optimizer, schedule, caps, evaluation, seed."""

    lr: float = 5e-5
    max_steps: int = 300
    # the time one run may train: where it stops a `make finetune` model before max_steps the model is paused
    # (it serves as it is; RESUME=1 trains it on to max_steps with the same schedule), so the cap is not a
    # setting of the model: a model trained to max_steps is the same under any cap
    max_minutes: float = field(default=30.0, metadata=NOT_TRAINED)
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
    # what the one-logit head reads: cls (the [CLS] state, BertForSequenceClassification) or mean (the mean of
    # the pair's token states: what a sentence encoder such as e5 was trained to fill; engine.rerank.head_logits)
    pooling: str = "cls"
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
    # the personal booster ships only when the held-out sessions' NDCG@10 gain is this many standard errors
    # above 0 (1.645: a one-sided 5% test); then it is shrunk by 1 − 1/z²
    personal_min_z: float = 1.645
    # ... judged by this many folds of cross-validation over all training sessions (each validates once; the
    # number of the personal booster's trees chosen there too); 0: by the last valid_fraction alone
    personal_folds: int = 5
    # click logs with impressions: fit the taste click model (engine.taste) beside the ranker; it ships when
    # the last valid_fraction of the sessions' clicks are predicted better with it (z > personal_min_z)
    taste: bool = True
    seed: int = 0


DEBIAS_METHODS = ("naive", "position_term", "lgbm_position", "pbm_ips")


@dataclass
class RetrainConfig:
    """`make retrain` (finetune.retrain): the final ranker learned again from the service's own logged searches."""

    # the logged searches of the last window_days (before --until, default now) train and guard
    window_days: float = 28.0
    # the most recent holdout_days are held out for the ship guard; logs spanning less than the window (an hour
    # of traffic) hold out their last holdout_fraction of the time span instead
    holdout_days: float = 1.0
    holdout_fraction: float = 0.2
    # fewer logged searches with a click than this before the cut: nothing to learn from, the job says so
    min_searches: int = 30
    # how clicks are debiased: auto (every method below, the best on the validation sessions by a debiased DCG),
    # naive (clicks as labels), position_term (the logged position as an additive term), lgbm_position
    # (LightGBM's own position debiasing: `position` in the lambdarank Dataset), pbm_ips (the click model's
    # inverse propensities as row weights)
    debias: str = "auto"
    # boost new trees on top of the serving ranker's (queries without traffic keep their order); false: a new
    # ranker from the logged searches alone
    warm_start: bool = True
    # what the delta booster reads: by default the query's own click evidence only, so a query without traffic
    # keeps its serving order exactly (global click rates and popularity would move products clicked for other
    # queries: on the demo, +0.076 NDCG@10 on the trafficked judged queries but -0.066 on the others); a shop
    # with traffic on most queries may add ctr, popularity, ce, ...
    delta_features: list[str] = field(default_factory=lambda: ["query_ctr"])
    # query_ctr counts a product's clicks for a query once its clicking users weigh this much (each user at most
    # 1, less when they searched the query more than 3 times: a bot is a fraction of a user; engine.query_clicks)
    query_click_min_users: float = 1.0
    # inverse propensity weights are clipped at this (variance against bias)
    clip: float = 10.0
    # a user's logged searches weigh at most this many searches in all (a bot's thousand searches count as this)
    max_user_searches: float = 20.0
    # the guard's measure: clipped IPS clicks@k of the held-out searches, paired bootstrap interval
    k: int = 10
    # judged dev queries (finetune.dev, else eval.queries) may lose at most this much NDCG@10
    judged_tolerance: float = 0.005
    # > 0: first train the serving cross-encoder further on the logged debiased click pairs for at most this many
    # minutes (finetune.retrain_ce); the ranker is then fitted over its scores and the pair is guarded and
    # promoted together.  0: the cross-encoder stays as it is
    crossencoder_minutes: float = 0.0
    seed: int = 0
    # where the report goes (default reports/retrain/<config name>)
    reports: Path | None = None


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
    retrain: RetrainConfig = field(default_factory=RetrainConfig)


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
