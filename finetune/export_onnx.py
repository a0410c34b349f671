"""`python -m finetune.export_onnx --config C`: export the config's query encoder and cross-encoder to ONNX.

Offline, after `make finetune`: writes ``<model>.onnx/model.onnx`` and ``model.int8.onnx`` (dynamic int8
quantization of the weights with ONNX Runtime) beside each model, with ``export.json`` recording the source
model's fingerprint; the engine refuses an export whose source model has changed since.  The engine uses them
when the config says ``rerank.runtime: onnx`` / ``dense.query_runtime: onnx`` (``quantize: int8`` for the
quantized graph).  Checked on export: the ONNX scores/vectors match torch's on sample inputs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from core.config import Config
from engine.rerank import head_logits, trained_max_length
from indexer.encoder import PASSAGE_PREFIX, QUERY_PREFIX, model_fingerprint, resolve_model
from indexer.onnx_files import EXPORT_FILE, onnx_dir, onnx_file, read_export
from core.cli import command, load, run

SAMPLE = [
    ("华为手机", "华为 mate60 pro 5g 全网通 智能手机 黑色"),
    ("iphone15 256gb", "Apple iPhone 15 256GB 蓝色"),
    ("降噪耳机 sony", "索尼 WH-1000XM5 无线降噪耳机"),
]


def _export(model, inputs: dict, out: Path, output: str) -> None:
    import torch

    names = list(inputs)
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "tokens"}
    torch.onnx.export(
        model,
        tuple(inputs[n] for n in names),
        str(out),
        input_names=names,
        output_names=[output],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )


def export_model(path: Path, kind: str, max_length: int, check: bool = True) -> dict:
    """Export one model (``kind``: cross-encoder or query-encoder) to ``<path>.onnx/``."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(path))
    out_dir = onnx_dir(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "cross-encoder":
        model = AutoModelForSequenceClassification.from_pretrained(str(path), attn_implementation="eager").eval()
        feats = tok(
            [QUERY_PREFIX + q for q, _ in SAMPLE],
            [PASSAGE_PREFIX + t for _, t in SAMPLE],
            padding=True,
            truncation="longest_first",
            max_length=max_length,
            return_tensors="pt",
        )
        output = "logits"
    else:
        model = AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()
        feats = tok(
            [QUERY_PREFIX + q for q, _ in SAMPLE],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        output = "last_hidden_state"
    inputs = {k: feats[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in feats}

    class Wrapped(torch.nn.Module):  # one named output, positional inputs
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            if output == "logits":  # the cross-encoder's own head ([CLS] or mean pooling)
                return head_logits(self.m, **dict(zip(inputs, args)))
            return getattr(self.m(**dict(zip(inputs, args))), output)

    fp32, int8 = onnx_file(path, "none"), onnx_file(path, "int8")
    with torch.inference_mode():
        reference = Wrapped(model)(*inputs.values()).float().numpy()
    _export(Wrapped(model), inputs, fp32, output)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    report = {
        "kind": kind,
        "source": str(path),
        "source_fingerprint": model_fingerprint(path, 0),
        "output": output,
        "inputs": list(inputs),
        "opset": 17,
        "seconds": round(time.perf_counter() - t0, 1),
        "bytes": {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size},
    }
    if check:
        import onnxruntime as ort

        feed = {k: v.numpy() for k, v in inputs.items()}
        for name, f in (("fp32", fp32), ("int8", int8)):
            got = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, feed)[0]
            report[f"max_abs_diff_{name}"] = float(np.abs(got - reference).max())
        if report["max_abs_diff_fp32"] > 1e-3:
            raise RuntimeError(f"{path}: the ONNX graph disagrees with torch by {report['max_abs_diff_fp32']:.2g}")
    (out_dir / EXPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def current(path: Path, kind: str) -> bool:
    """Whether ``path`` has an export of this kind made from the weights it holds now."""
    export = read_export(path)
    return (
        bool(export)
        and export.get("kind") == kind
        and export.get("source_fingerprint") == model_fingerprint(path, 0)
        and onnx_file(path, "none").is_file()
        and onnx_file(path, "int8").is_file()
    )


def export_config(
    cfg: Config, if_missing: bool = False, only_used: bool = False, kinds=("cross-encoder", "query-encoder")
) -> list[dict]:
    """Export what the config serves with: the cross-encoder (rerank.model, and rerank.teacher where set) and the
    dense query encoder.
    ``if_missing``: keep current exports; ``only_used``: only models the config runs on ONNX; ``kinds``: which."""
    done = []
    todo = []
    if "cross-encoder" in kinds and cfg.rerank.model and (not only_used or cfg.rerank.runtime == "onnx"):
        todo.append((Path(resolve_model(cfg.rerank.model, cfg.root)), "cross-encoder", cfg.rerank.max_length or 96))
    if "cross-encoder" in kinds and cfg.rerank.teacher and (not only_used or cfg.rerank.runtime == "onnx"):
        teacher = Path(resolve_model(cfg.rerank.teacher, cfg.root))  # the cascade's: a cross-encoder too
        todo.append((teacher, "cross-encoder", trained_max_length(teacher)))
    if (
        "query-encoder" in kinds
        and "dense" in cfg.search.stages
        and (not only_used or cfg.dense.query_runtime == "onnx")
    ):
        todo.append((Path(resolve_model(cfg.dense.model, cfg.root)), "query-encoder", cfg.dense.max_length))
    if "query-encoder" in kinds and cfg.rerank.base_cosine and (not only_used or cfg.dense.query_runtime == "onnx"):
        # the zero-shot encoder every query meets for the base_cos features
        todo.append((Path(resolve_model(cfg.dense.base_model, cfg.root)), "query-encoder", cfg.dense.max_length))
    for path, kind, max_length in dict.fromkeys(todo):  # dense.base_model may be dense.model
        if if_missing and current(path, kind):
            done.append({"kind": kind, "source": str(path), "kept": "current export"})
            continue
        done.append(export_model(path, kind, max_length))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = command("finetune.export_onnx", __doc__, None, overrides=True)
    ap.add_argument(
        "--if-missing",
        action="store_true",
        help="only the models the config runs on ONNX, and only where no current export exists",
    )
    args = ap.parse_args(argv)

    def body():
        for r in export_config(load(args), if_missing=args.if_missing, only_used=args.if_missing):
            print(json.dumps(r))

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
