import json

import numpy as np
import pytest

from core.formats.catalog import read_catalog
from indexer.encoder import Encoder
from indexer.vocab_trim import trim_model

from conftest import write_tiny_unigram_bert


@pytest.fixture(scope="module")
def unigram_model(demo_dir, tmp_path_factory):
    titles = read_catalog(demo_dir / "catalog.jsonl").titles
    # text of another shop too, so that the vocabulary has pieces this catalog never needs
    other = [
        "stainless steel water bottle vacuum insulated",
        "cordless drill lithium battery charger",
        "outdoor patio furniture cushion waterproof",
        "kitchen faucet pull down sprayer chrome",
    ] * 30
    return write_tiny_unigram_bert(tmp_path_factory.mktemp("uni") / "model", titles + other, vocab_size=900), titles


def test_trimmed_model_embeds_covered_texts_identically(unigram_model, tmp_path):
    model, titles = unigram_model
    covered, queries = titles[:80], ["华为手机", "降噪耳机 索尼"]
    stats = trim_model(model, tmp_path / "trimmed", covered, queries)
    assert stats["pieces_after"] < stats["pieces_before"]
    full = Encoder(model, max_length=64, device="cpu")
    small = Encoder(tmp_path / "trimmed", max_length=64, device="cpu")
    np.testing.assert_allclose(small.encode_passages(covered), full.encode_passages(covered), atol=1e-5)
    np.testing.assert_allclose(small.encode_queries(queries), full.encode_queries(queries), atol=1e-5)
    assert small.fingerprint != full.fingerprint
    cfg = json.loads((tmp_path / "trimmed" / "config.json").read_text())
    assert cfg["vocab_size"] == stats["pieces_after"]


def test_uncovered_text_falls_back_to_characters(unigram_model, tmp_path):
    from transformers import AutoTokenizer

    model, titles = unigram_model
    trim_model(model, tmp_path / "trimmed", titles[:20])
    tok = AutoTokenizer.from_pretrained(tmp_path / "trimmed")
    text = titles[500]  # not among the covered titles
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids or tok.unk_token_id in AutoTokenizer.from_pretrained(model)(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True).replace("▁", "").replace(" ", "") == text.replace(" ", "")


def test_trim_vocab_config_builds_and_serves_a_trimmed_model(unigram_model, demo_dir, tmp_path):
    from engine import SearchEngine
    from indexer.build import build_indexes, stale_stages

    from conftest import make_config

    model, _ = unigram_model
    qfile = tmp_path / "train.tsv"
    qfile.write_text("query\tpid\n华为手机\tP1\n索尼耳机\tP2\n", encoding="utf-8")
    cfg = make_config(
        tmp_path,
        demo_dir / "catalog.jsonl",
        name="trim",
        search={"stages": ["bm25", "dense"]},
        dense={
            "model": str(model),
            "base_model": str(model),
            "device": "cpu",
            "trim_vocab": True,
            "trim_queries": str(qfile),
        },
    )
    assert stale_stages(cfg, ["bm25", "dense"]) == ["bm25", "dense"]
    build_indexes(cfg, progress=False)
    trimmed = tmp_path / "models" / "trim" / "trimmed"
    stats = json.loads((trimmed / "trim.json").read_text())
    assert stats["pieces_after"] < stats["pieces_before"] and stats["texts_covered"] == 600 + 2
    eng = SearchEngine.from_config(cfg)
    enc, _ = eng.dense_stage("dense")
    assert str(enc.model_path) == str(trimmed)
    assert stale_stages(cfg, ["bm25", "dense", "dense-base"]) == ["dense-base"]  # base stays untrimmed
    full = Encoder(model, max_length=64, device="cpu")
    np.testing.assert_allclose(enc.encode_queries(["华为手机"]), full.encode_queries(["华为手机"]), atol=1e-5)
