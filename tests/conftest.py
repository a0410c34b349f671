import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "datasets"

from indexer.config import config_from_dict  # noqa: E402


def make_config(tmp_path: Path, catalog: Path, **sections):
    raw = {"name": "t", "root": ".", "catalog": {"path": str(catalog)}, "index_dir": str(tmp_path / "indexes" / "t")}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(raw, base=tmp_path)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small generated demo catalog + click log + judged queries (same generator as `make demo-data`)."""
    from eval.demo_data import write_demo

    out = tmp_path_factory.mktemp("demo")
    write_demo(out, n_products=600, n_users=120)
    return out
