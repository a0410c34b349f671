"""`python -m eval.sim.demo_data --out data/demo`: the generated demo catalog and click log.

Deterministic (seeded): about 5,000 Chinese products over 23 categories (20 and three accessories),
each with a brand (Chinese and Latin names), a model number, attributes,
a price and a mixed Chinese/English title (``Apple/苹果 iPhone15 Pro 256GB
手机 …``, ``500ml``, ``64GB``); and a click log from simulated users with
stable category and brand preferences who search over 60 days: for each
query the simulated shop shows 10 products, the user clicks, adds to cart
or buys with probabilities that depend on how well a product's title fits
the query (its noun, brand, model series, capacity or size, colour and
other attributes: :func:`_fit`) and on the user's brand preference.  The
shop's engine is rough (it ranks by fit with a lot of noise), so a shown
list mixes products that match the query's details with some that do not,
and clicks tell them apart: what the demo's cross-encoder and ranker learn.

Writes ``catalog.jsonl``, ``clicks.jsonl`` and ``queries.tsv`` (judged
queries from the last 10 days' sessions: query, pid, relevance = best event,
1 click, 2 add to cart, 3 purchase), the demo's evaluation set.

Nothing here is real data: it exists so that the demo and the tests run
anywhere, offline, in seconds.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from core.formats.clicklog import Event, write_clicklog

from eval.sim.demo_vocab import CATEGORIES
from core.cli import command

DAY = 86400
START = 1_767_225_600  # 2026-01-01T00:00:00Z


@dataclass
class Product:
    pid: str
    title: str
    category: str
    brand: str
    brand_latin: str
    noun: str
    attrs: dict[str, str]
    price: float
    model: str = ""
    spec: str = ""


def _title(
    rng: random.Random,
    cat: str,
    spec: dict,
    brand: tuple[str, str],
    noun: str,
    model: str,
    spec_str: str,
    attrs: dict[str, str],
) -> str:
    latin, han = brand
    brand_part = rng.choice([f"{latin}/{han}", han, f"{han}{latin}", latin]) if latin != han else han
    extra = rng.sample(spec["extra"], k=min(len(spec["extra"]), rng.randint(1, 2)))
    parts = [brand_part, model, noun, spec_str, *attrs.values(), *extra]
    head, rest = parts[:2], parts[2:]
    rng.shuffle(rest)
    title = " ".join(head + rest)
    if rng.random() < 0.15:
        title = "【官方正品】" + title
    if rng.random() < 0.1:
        title = title.replace("GB", "ＧＢ").replace("ml", "ｍｌ")  # full-width, as some shops type it
    return title


def generate_catalog(n_products: int = 5000, seed: int = 7) -> list[Product]:
    rng = random.Random(seed)
    cats = list(CATEGORIES)
    products: list[Product] = []
    for i in range(n_products):
        cat = cats[i % len(cats)]
        spec = CATEGORIES[cat]
        bi = rng.randrange(len(spec["brands"]))
        brand = spec["brands"][bi]
        if "fits" in spec:  # an accessory: the model it fits, of any brand of that category (适用iPhone15)
            fitted = CATEGORIES[spec["fits"]]["models"]
            model = fitted[rng.randrange(len(fitted))].replace("{n}", str(rng.randint(1, 16)))
        else:  # each brand keeps its own model line, so a model name points at one brand
            model = spec["models"][bi % len(spec["models"])].replace("{n}", str(rng.randint(1, 16)))
        noun = rng.choice(spec["nouns"])
        sv = rng.choice(spec["spec_vals"])
        spec_str = rng.choice(spec["specs"]).replace("{s}", str(sv))
        attrs = {k: rng.choice(v) for k, v in spec["attrs"].items()}
        lo, hi = spec["price"]
        price = round(rng.uniform(lo, hi), 0) - 0.1 if rng.random() < 0.7 else round(rng.uniform(lo, hi), 2)
        pid = f"P{100000 + i}"
        products.append(
            Product(
                pid,
                _title(rng, cat, spec, brand, noun, ("适用" + model) if "fits" in spec else model, spec_str, attrs),
                cat,
                brand[1],
                brand[0],
                noun,
                attrs,
                round(price, 2),
                model,
                spec_str,
            )
        )
    return products


@dataclass
class User:
    uid: str
    categories: list[str]
    weights: list[float]
    brand_pref: dict[str, str]


def _query_for(rng: random.Random, user: User, cat: str, pool: list[Product]) -> tuple[str, dict]:
    """A query and what it asks for: a noun, and optionally a brand (the user's), a model series or a
    capacity/size of a product of that brand in ``pool`` (so that the shop has it), an attribute."""
    spec = CATEGORIES[cat]
    noun = rng.choice(spec["nouns"])
    want: dict = {"noun": noun}
    words = [noun]
    if rng.random() < 0.45:
        brand = next(b for b in spec["brands"] if b[1] == user.brand_pref[cat])
        want["brand"] = brand[1]
        of_brand = [p for p in pool if p.brand == brand[1]]
        example = rng.choice(of_brand) if of_brand else None
        if example is not None and rng.random() < 0.35:  # a model series names the brand by itself
            want["model"] = example.model
            words.insert(0, example.model if rng.random() < 0.5 else example.model.lower())
        else:
            words.insert(0, rng.choice([brand[1], brand[0].lower(), brand[0]]))
        if example is not None and example.spec and rng.random() < 0.4:
            want["spec"] = example.spec
            words.append(example.spec if rng.random() < 0.6 else example.spec.lower())
    if rng.random() < 0.4:
        key = rng.choice(list(spec["attrs"]))
        val = rng.choice(spec["attrs"][key])
        words.append(val)
        want["attr"] = val
    return " ".join(words) if rng.random() < 0.5 else "".join(words), want


def _fit(p: Product, want: dict) -> float:
    """How well a product's title fits what the query asks for, 0..1: each detail it gets wrong costs
    (a wrong model series or brand most, a wrong capacity or colour less, another noun of the category least)."""
    score = 1.0 if p.noun == want["noun"] else 0.5
    if "brand" in want:
        score *= 1.0 if p.brand == want["brand"] else 0.15
    if "model" in want:
        score *= 1.0 if p.model == want["model"] else 0.25
    if "spec" in want:
        score *= 1.0 if p.spec == want["spec"] else 0.3
    if "attr" in want:
        score *= 1.0 if want["attr"] in p.attrs.values() else 0.3
    return score


# what shoppers buy after (or with) a product of a category: a case and a charger for the phone they bought
COMPLEMENTS = {"手机": ("手机壳", "充电器"), "运动鞋": ("袜子",), "笔记本电脑": ("机械键盘",), "咖啡": ("保温杯",)}
# categories shoppers buy again (the same product, every one to three weeks); the others are bought once
REPEAT = ("牛奶", "咖啡", "猫粮", "洗衣液", "洗发水", "面膜")


def _session(rng, user: User, cat: str, query: str, want: dict, ts: float, pool, events, intent: float = 1.0):
    """One search: the shop shows 10 products (rough: by fit with a lot of noise), the user clicks, carts and
    buys by fit and brand preference (``intent`` scales how readily).  Returns the products bought."""
    shown = sorted(rng.sample(pool, min(40, len(pool))), key=lambda p: -_fit(p, want) - rng.uniform(0, 0.8))[:10]
    bought = []
    for pos, p in enumerate(shown):
        t = ts + pos
        events.append(Event(user.uid, query, p.pid, "impression", t))
        prefer = 1.6 if p.brand == user.brand_pref.get(cat) else 0.7
        p_click = min(0.95, 0.5 * intent * _fit(p, want) ** 1.5 * prefer / (1 + 0.15 * pos))
        if rng.random() < p_click:
            events.append(Event(user.uid, query, p.pid, "click", t + 5))
            if rng.random() < min(0.9, 0.3 * prefer * intent):
                events.append(Event(user.uid, query, p.pid, "add_to_cart", t + 30))
                if rng.random() < 0.5:
                    events.append(Event(user.uid, query, p.pid, "purchase", t + 120))
                    bought.append(p)
    return bought


def _complement_want(rng, bought: Product, cat: str, pool) -> tuple[str, dict]:
    """The follow-up search for an accessory of ``bought``: a case for its model, a charger or socks of its
    brand where the accessory category has that brand, otherwise the accessory's noun alone."""
    noun = rng.choice(CATEGORIES[cat]["nouns"])
    want: dict = {"noun": noun}
    if "fits" in CATEGORIES[cat]:
        want["model"] = bought.model
        return f"{bought.model} {noun}" if rng.random() < 0.5 else f"{bought.model}{noun}", want
    if any(p.brand == bought.brand for p in pool):
        want["brand"] = bought.brand
        return f"{bought.brand}{noun}", want
    return noun, want


def _follow_ups(rng, user: User, bought: list[Product], ts: float, end: float, by_cat, events) -> None:
    """After a purchase: accessories (same visit or days later) and, in repeat categories, buying it again."""
    for p in bought:
        for cat in COMPLEMENTS.get(p.category, ()):
            if rng.random() < 0.6:
                t = ts + (300.0 if rng.random() < 0.5 else rng.uniform(0.5, 5.0) * DAY)
                if t < end:
                    query, want = _complement_want(rng, p, cat, by_cat[cat])
                    # a search naming the phone model finds the cases that fit it: the shop's 40 best by fit
                    pool = sorted(by_cat[cat], key=lambda x: -_fit(x, want) - rng.uniform(0, 0.3))[:40]
                    got = _session(rng, user, cat, query, want, t, pool, events, intent=2.0)
                    _follow_ups(rng, user, got, t, end, by_cat, events)
        t = ts
        while p.category in REPEAT and rng.random() < 0.7:
            t += rng.uniform(7.0, 21.0) * DAY
            if t >= end:
                break
            query = f"{p.brand}{p.noun}"
            for event, dt in (("impression", 0), ("click", 5), ("add_to_cart", 30), ("purchase", 90)):
                events.append(Event(user.uid, query, p.pid, event, t + dt))


def simulate_clicks(
    products: list[Product], n_users: int = 400, days: int = 60, sessions_per_user: int = 12, seed: int = 11
) -> list[Event]:
    rng = random.Random(seed)
    by_cat: dict[str, list[Product]] = defaultdict(list)
    for p in products:
        by_cat[p.category].append(p)
    cats = [c for c in CATEGORIES if "fits" not in CATEGORIES[c]]  # accessories are searched as follow-ups too
    end = START + days * DAY
    events: list[Event] = []
    for u in range(n_users):
        k = rng.randint(1, 3)
        ucats = rng.sample(cats, k)
        user = User(
            f"U{u:04d}",
            ucats,
            [rng.uniform(0.5, 1.0) for _ in ucats],
            {c: rng.choice(CATEGORIES[c]["brands"])[1] for c in CATEGORIES},
        )
        for _ in range(sessions_per_user):
            ts = START + rng.uniform(0, days * DAY)
            cat = rng.choices(ucats, user.weights)[0] if rng.random() < 0.9 else rng.choice(cats)
            query, want = _query_for(rng, user, cat, by_cat[cat])
            bought = _session(rng, user, cat, query, want, ts, by_cat[cat], events)
            _follow_ups(rng, user, bought, ts, end, by_cat, events)
    events.sort(key=lambda e: e.timestamp)
    return events


GAIN = {"click": 1, "add_to_cart": 2, "purchase": 3}


def judged_queries(events: list[Event], since: float) -> list[tuple[str, str, str, int]]:
    """(qid, query, pid, relevance) from events after ``since``: the best event per query and product."""
    best: dict[tuple[str, str], int] = {}
    for e in events:
        if e.timestamp >= since and e.event in GAIN:
            key = (e.query, e.product_id)
            best[key] = max(best.get(key, 0), GAIN[e.event])
    qids: dict[str, str] = {}
    rows = []
    for (q, pid), g in sorted(best.items()):
        qid = qids.setdefault(q, f"q{len(qids) + 1}")
        rows.append((qid, q, pid, g))
    return rows


def write_demo(out: Path, n_products: int = 5000, n_users: int = 400, seed: int = 7) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    products = generate_catalog(n_products, seed)
    with open(out / "catalog.jsonl", "w", encoding="utf-8") as f:
        for p in products:
            f.write(
                json.dumps(
                    {
                        "id": p.pid,
                        "title": p.title,
                        "category": p.category,
                        "brand": p.brand,
                        "price": p.price,
                        "attributes": p.attrs,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    events = simulate_clicks(products, n_users=n_users, seed=seed + 4)
    write_clicklog(events, out / "clicks.jsonl")
    rows = judged_queries(events, since=START + 50 * DAY)
    with open(out / "queries.tsv", "w", encoding="utf-8") as f:
        f.write("qid\tquery\tpid\trelevance\n")
        for qid, q, pid, g in rows:
            f.write(f"{qid}\t{q}\t{pid}\t{g}\n")
    return {
        "products": len(products),
        "events": len(events),
        "judged_pairs": len(rows),
        "queries": len({r[0] for r in rows}),
    }


def main(argv=None) -> int:
    ap = command("eval.sim.demo_data", __doc__, False)
    ap.add_argument("--out", default="data/demo")
    ap.add_argument("--products", type=int, default=5000)
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    stats = write_demo(Path(args.out), args.products, args.users, args.seed)
    print(f"demo data in {args.out}: " + ", ".join(f"{v} {k}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
