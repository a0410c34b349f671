import numpy as np
import torch

from finetune.biencoder import Example, batches, mnrl_loss, pool_mrr, train
from core.formats.catalog import read_catalog
from core.config import BiEncoderTrainConfig
from indexer.encoder import Encoder


def examples_from_demo(demo_dir, n=64):
    cat = read_catalog(demo_dir / "catalog.jsonl")
    out = []
    for i in range(n):
        # the query is a piece of the title: brand + category words
        query = f"{cat.brands[i]} {cat.categories[i]}"
        out.append(Example(query, cat.titles[i], [cat.titles[(i + 7) % len(cat)]], cat.ids[i]))
    return out


def test_batches_hold_no_duplicate_positive_or_query():
    ex = [
        Example("q1", "t1", [], "P1"),
        Example("q1", "t2", [], "P2"),
        Example("q2", "t1", [], "P1"),
        Example("q3", "t3", [], "P3"),
        Example("q4", "t4", [], "P4"),
    ]
    gen = batches(ex, 3, np.random.default_rng(0))
    for _ in range(20):
        b = next(gen)
        assert len({e.positive_id for e in b}) == len(b) and len({e.query for e in b}) == len(b)


def test_a_training_step_lowers_the_loss(tiny_model):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    batch = [Example(f"华为 手机 {i}", f"华为 Mate{i} 手机 {i}GB", [f"猫粮 鸡肉 {i}kg"], f"P{i}") for i in range(8)]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = mnrl_loss(model, batch, scale=20, max_negatives=1)
    for _ in range(5):
        loss = mnrl_loss(model, batch, scale=20, max_negatives=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mnrl_loss(model, batch, scale=20, max_negatives=1).item() < before.item()


def test_train_keeps_the_best_checkpoint_and_reloads_identically(tiny_model, demo_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    ex = examples_from_demo(demo_dir)
    pool = [e.positive for e in ex[:40]]
    evaluate = pool_mrr([e.query for e in ex[:16]], pool, [{i} for i in range(16)])
    cfg = BiEncoderTrainConfig(lr=1e-3, batch_size=16, scale=20, max_steps=12, eval_every=4, warmup_steps=2)
    report = train(model, ex, cfg, tmp_path / "bi", evaluate=evaluate, log_path=tmp_path / "log.json", progress=False)
    assert report["steps"] == 12 and len(report["log"]) == 4  # step 0 and three evaluations
    assert report["best_dev"] >= report["log"][0]["dev"]
    saved = SentenceTransformer(str(tmp_path / "bi"), device="cpu")
    assert abs(evaluate(saved) - report["best_dev"]) <= 5e-5  # the log rounds to 4 decimals
    a = Encoder(tmp_path / "bi", max_length=64, device="cpu").encode_queries(["华为 手机"])
    b = Encoder(tmp_path / "bi", max_length=64, device="cpu").encode_queries(["华为 手机"])
    np.testing.assert_array_equal(a, b)


def test_distillation_teaches_the_bi_encoder_the_teachers_order(tiny_model, demo_dir, tmp_path):
    import json

    from sentence_transformers import SentenceTransformer

    from finetune.biencoder import distill_kl_loss, read_teacher_cache

    titles = read_catalog(demo_dir / "catalog.jsonl").titles[:120]
    rng = np.random.default_rng(0)
    taught = []  # the teacher ranks each query's own title first, the others by a fixed random preference
    for i, t in enumerate(titles[:60]):
        others = [titles[j] for j in rng.choice(np.delete(np.arange(len(titles)), i), 9, replace=False)]
        taught.append((f"q{i} {t[:6]}", [t] + others, np.concatenate([[6.0], np.linspace(2.0, -2.0, 9)]).tolist()))
    cache = tmp_path / "teacher"
    cache.mkdir()
    (cache / "chunk-0000000-x.json").write_text(json.dumps(taught, ensure_ascii=False), encoding="utf-8")
    data = read_teacher_cache(cache, exclude={taught[0][0]})
    assert len(data) == 59 and all(q != taught[0][0] for q, _, _ in data)
    examples = [Example(f"q{i} {t[:6]}", t, [], f"p{i}") for i, t in enumerate(titles[:60])]
    model = SentenceTransformer(str(tiny_model), device="cpu")
    group = [(q, ts[:8], s[:8]) for q, ts, s in data[:16]]
    with torch.no_grad():
        before = float(distill_kl_loss(model, group, 20.0))
    cfg = BiEncoderTrainConfig(
        lr=2e-3,
        batch_size=8,
        scale=20,
        max_steps=30,
        eval_every=30,
        warmup_steps=2,
        max_length=32,
        freeze_word_embeddings=False,
        distill_weight=2.0,
        distill_batch=8,
        distill_group=8,
    )
    report = train(model, examples, cfg, tmp_path / "student", progress=False, distill=data)
    assert report["steps"] == 30
    with torch.no_grad():
        after = float(distill_kl_loss(model, group, 20.0))
    assert after < 0.8 * before


def test_lora_trains_adapters_only_and_saves_a_merged_model_that_encodes_the_same(tiny_model, demo_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    titles = read_catalog(demo_dir / "catalog.jsonl").titles[:64]
    examples = [Example(f"q{i} {t[:6]}", t, [titles[(i + 5) % len(titles)]], f"p{i}") for i, t in enumerate(titles)]
    model = SentenceTransformer(str(tiny_model), device="cpu")
    base = {k: v.clone() for k, v in model[0].auto_model.state_dict().items()}
    cfg = BiEncoderTrainConfig(
        lr=5e-3,
        batch_size=8,
        scale=20,
        max_steps=8,
        eval_every=8,
        warmup_steps=1,
        max_length=32,
        freeze_word_embeddings=False,
        lora_rank=4,
    )
    train(model, examples, cfg, tmp_path / "lora-be", progress=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # only the adapters learn
    assert (tmp_path / "lora-be" / "lora" / "adapter_model.safetensors").is_file()
    saved = SentenceTransformer(str(tmp_path / "lora-be"), device="cpu")
    merged = saved[0].auto_model.state_dict()
    assert not any("lora" in k for k in merged)  # a plain model
    assert any(not torch.equal(merged[k], base[k]) for k in base if k in merged)  # the adapters were merged in
    model.eval()
    np.testing.assert_allclose(saved.encode(titles[:4]), model.encode(titles[:4]), atol=1e-5)
