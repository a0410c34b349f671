"""Where a model's ONNX exports live and how to tell they are current (shared by the export job and the engine).

A model folder ``M`` gets its exports in the sibling folder ``M.onnx/`` (never inside ``M``: the model's
fingerprint hashes its own files, and a ranker or an index built on the model must not see it change):
``model.onnx`` (fp32), ``model.int8.onnx`` (weights quantized to int8, dynamic activations) and
``export.json`` (the source model's fingerprint, what the graph outputs).
"""

from __future__ import annotations

import json
from pathlib import Path

EXPORT_FILE = "export.json"


def onnx_dir(model_path: Path | str) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + ".onnx")


def onnx_file(model_path: Path | str, quantize: str) -> Path:
    return onnx_dir(model_path) / ("model.int8.onnx" if quantize == "int8" else "model.onnx")


def read_export(model_path: Path | str) -> dict | None:
    f = onnx_dir(model_path) / EXPORT_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
