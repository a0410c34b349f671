"""The search page: its HTML (``static/index.html``) and the simulated users its user picker offers (the demo's)."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).with_name("static")


def page_html() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


def demo_users(engine, n: int = 8) -> list[dict]:
    """The simulated users of a click-log config (the demo's) with most engagement and their favourite
    brand, for the page's user picker; [] for judged-pairs data."""
    from collections import Counter, defaultdict

    from core.formats.clicklog import iter_clicklog

    log_path = engine.cfg.finetune.train
    if log_path is None or not Path(log_path).is_file() or Path(log_path).suffix != ".jsonl":
        return []
    index = engine.products.row_map()
    brands = engine.products.brands
    codes = engine.products.brand_codes
    taste: dict[str, Counter] = defaultdict(Counter)
    for _, e in iter_clicklog(log_path):
        if isinstance(e, Exception) or e.event == "impression":
            continue
        row = index.get(e.product_id)
        if row is None:
            continue
        code = int(codes[row])
        if 0 <= code < len(brands):
            taste[e.user_id][brands[code]] += 1
    top = sorted(taste, key=lambda u: -sum(taste[u].values()))[:n]
    return [
        {"user_id": u, "events": sum(taste[u].values()), "favourite_brands": [b for b, _ in taste[u].most_common(2)]}
        for u in top
    ]
