import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "datasets"

from core.config import config_from_dict  # noqa: E402


def make_config(tmp_path: Path, catalog: Path, **sections):
    raw = {"name": "t", "root": ".", "catalog": {"path": str(catalog)}, "index_dir": str(tmp_path / "indexes" / "t")}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(raw, base=tmp_path)


def tiny_dense_config(tmp_path: Path, demo_dir: Path, tiny_model: Path, build: bool = True, **sections):
    """The tiny demo catalog with bm25 and a dense stage over the tiny model (flat FAISS, CPU), its indexes built in
    ``tmp_path``; ``sections`` add or replace config settings."""
    from indexer.build import build_indexes

    dense = {
        "model": str(tiny_model),
        "base_model": str(tiny_model),
        "max_length": 32,
        "device": "cpu",
        "factory": "Flat",
    }
    cfg = make_config(
        tmp_path, demo_dir / "catalog.jsonl", search={"stages": ["bm25", "dense"]}, dense=dense, **sections
    )
    if build:
        build_indexes(cfg, progress=False)
    return cfg


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small generated demo catalog + click log + judged queries (same generator as `make demo-data`)."""
    from eval.sim.demo_data import write_demo

    out = tmp_path_factory.mktemp("demo")
    write_demo(out, n_products=600, n_users=120)
    return out


def write_tiny_bert(out: Path, texts, seed: int = 0) -> Path:
    """A tiny randomly initialised BERT sentence-transformer (2 layers, hidden 32), character vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from finetune.base_model import write_sentence_transformers_files

    chars = sorted(
        {c for t in texts for c in t.lower() if not c.isspace()} | set("abcdefghijklmnopqrstuvwxyz0123456789")
    )
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars if c.isascii()]
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    ).save_pretrained(out)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    write_sentence_transformers_files(out, max_seq_length=64, dim=32)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, demo_dir):
    from core.formats.catalog import read_catalog

    titles = read_catalog(demo_dir / "catalog.jsonl").titles
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny", titles)


def write_tiny_unigram_bert(out: Path, texts, vocab_size: int = 600, seed: int = 0) -> Path:
    """A tiny random BERT whose tokenizer is a Unigram model trained on ``texts`` (like e5's SentencePiece)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from finetune.base_model import write_sentence_transformers_files

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(
        list(texts) + ["query: passage:"],
        trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    out.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=128,
    ).save_pretrained(out)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=1,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    write_sentence_transformers_files(out, max_seq_length=64, dim=32)
    return out


@pytest.fixture(scope="session")
def job_cfg(demo_dir, tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    models = tmp / "models" / "t"
    return make_config(
        tmp,
        demo_dir / "catalog.jsonl",
        text={"unknown_word_ngrams": 1},
        dense={"model": str(models / "bi-encoder"), "base_model": str(tiny_model), "max_length": 64},
        search={"stages": ["bm25", "dense"]},
        rerank={"model": str(models / "cross-encoder"), "depth": 20, "weight": 0.5},
        finetune={
            "train": str(demo_dir / "clicks.jsonl"),
            "holdout_days": 10,
            "dev_queries": 40,
            "out_dir": str(models),
            "biencoder": {
                "lr": 1e-3,
                "batch_size": 16,
                "scale": 20,
                "max_steps": 6,
                "eval_every": 3,
                "warmup_steps": 2,
            },
            "crossencoder": {
                "num_layers": 1,
                "lr": 1e-3,
                "batch_size": 8,
                "group_size": 3,
                "max_steps": 6,
                "eval_every": 3,
                "warmup_steps": 2,
                "max_length": 64,
                "eval_queries": 20,
            },
        },
        eval={"queries": str(demo_dir / "queries.tsv")},
    )


@pytest.fixture(scope="session")
def trained(job_cfg):
    """Tiny bi-encoder, cross-encoder and ranker trained by the `make finetune` job on the tiny demo data."""
    from finetune.job import run_job

    return run_job(job_cfg, progress=False)


def copy_config(cfg, tmp: Path, **rerank):
    """``cfg`` over a private copy of its built indexes (tests that delete, add or rebuild), with a user key."""
    import dataclasses
    import shutil

    index_dir = tmp / "indexes" / cfg.index_dir.name
    shutil.copytree(
        cfg.index_dir,
        index_dir,
        symlinks=True,
        ignore=shutil.ignore_patterns("events.sqlite*", "deleted.txt", "additions.jsonl"),
    )
    return dataclasses.replace(
        cfg,
        index_dir=index_dir,
        rerank=dataclasses.replace(cfg.rerank, **rerank),
        personal=dataclasses.replace(
            cfg.personal, user_key="test-key", path=index_dir / "events.sqlite", retention_days=3650
        ),
    )  # the generated logs are dated 2026-01..03


@pytest.fixture()
def live_cfg(job_cfg, trained, tmp_path):
    """The tiny trained pipeline (bm25 + dense + cross-encoder + ranker) over a private copy of its indexes."""
    return copy_config(job_cfg, tmp_path)


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory):
    """A real PostgreSQL server for the event-store tests (pip's `pgserver`: binaries in the wheel, started in a
    temporary folder, stopped at the end).  Required under CI; skipped on a machine without it."""
    import os

    try:
        import pgserver
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("pgserver is not installed (pip install -e '.[test]')")
    srv = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield srv.get_uri()
    srv.cleanup()
