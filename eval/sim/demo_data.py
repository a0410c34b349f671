"""`python -m eval.sim.demo_data --out data/demo`: the generated demo catalog and click log.

Deterministic (seeded): about 5,000 Chinese products over 20 categories,
each with a brand (Chinese and Latin names), a model number, attributes,
a price and a mixed Chinese/English title (``Apple/苹果 iPhone15 Pro 256GB
手机 …``, ``500ml``, ``64GB``); and a click log from simulated users with
stable category and brand preferences who search over 60 days: for each
query the simulated shop shows 10 products, the user clicks, adds to cart
or buys with probabilities that depend on how well a product fits the
query and on the user's brand preference.

Writes ``catalog.jsonl``, ``clicks.jsonl`` and ``queries.tsv`` (judged
queries from the last 10 days' sessions: query, pid, relevance = best event,
1 click, 2 add to cart, 3 purchase), the demo's evaluation set.

Nothing here is real data: it exists so that the demo and the tests run
anywhere, offline, in seconds.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from core.formats.clicklog import Event, write_clicklog

# category: (nouns, brands [(latin, chinese)], specs, attribute pools, price range)
CATEGORIES: dict[str, dict] = {
    "手机": dict(
        nouns=["手机", "智能手机", "5G手机"],
        brands=[
            ("Apple", "苹果"),
            ("Huawei", "华为"),
            ("Xiaomi", "小米"),
            ("OPPO", "欧珀"),
            ("vivo", "维沃"),
            ("Honor", "荣耀"),
        ],
        models=["iPhone{n}", "Mate{n}", "Redmi Note{n}", "Reno{n}", "X{n}0", "Magic{n}"],
        specs=["{s}GB"],
        spec_vals=[64, 128, 256, 512],
        attrs={"颜色": ["黑色", "白色", "蓝色", "紫色", "金色"], "网络": ["5G", "4G全网通"]},
        extra=["全网通", "双卡双待", "官方正品", "国行", "拍照", "游戏"],
        price=(999, 9999),
    ),
    "笔记本电脑": dict(
        nouns=["笔记本电脑", "轻薄本", "游戏本"],
        brands=[("Lenovo", "联想"), ("ASUS", "华硕"), ("Dell", "戴尔"), ("HP", "惠普"), ("Apple", "苹果")],
        models=["ThinkPad X{n}", "ROG{n}", "XPS{n}", "战66 {n}代", "MacBook Air M{n}"],
        specs=["{s}GB+512GB", "{s}G内存"],
        spec_vals=[8, 16, 32],
        attrs={"屏幕": ["14英寸", "15.6英寸", "16英寸"], "处理器": ["i5", "i7", "R7", "M2"]},
        extra=["办公", "学生", "高性能", "轻薄便携"],
        price=(2999, 15999),
    ),
    "耳机": dict(
        nouns=["蓝牙耳机", "无线耳机", "降噪耳机", "头戴式耳机"],
        brands=[("Sony", "索尼"), ("Apple", "苹果"), ("Huawei", "华为"), ("Bose", "博士"), ("EDIFIER", "漫步者")],
        models=["WH-{n}000XM5", "AirPods Pro{n}", "FreeBuds {n}", "QC{n}5", "W{n}20NB"],
        specs=["续航{s}小时"],
        spec_vals=[20, 30, 40],
        attrs={"颜色": ["黑色", "白色", "银色"], "类型": ["入耳式", "头戴式", "半入耳"]},
        extra=["主动降噪", "运动", "游戏", "低延迟"],
        price=(99, 2999),
    ),
    "洗发水": dict(
        nouns=["洗发水", "洗发露", "去屑洗发水"],
        brands=[
            ("Head&Shoulders", "海飞丝"),
            ("Pantene", "潘婷"),
            ("Clear", "清扬"),
            ("Syoss", "丝蕴"),
            ("Rejoice", "飘柔"),
        ],
        models=["去屑{n}号", "丝质柔滑{n}", "男士{n}"],
        specs=["{s}ml", "{s}ml*2瓶"],
        spec_vals=[200, 400, 500, 750],
        attrs={"功效": ["去屑", "控油", "止痒", "修护"], "适用": ["男士", "女士", "通用"]},
        extra=["家庭装", "正品", "持久留香"],
        price=(29, 129),
    ),
    "牛奶": dict(
        nouns=["纯牛奶", "酸奶", "奶粉", "早餐奶"],
        brands=[("Yili", "伊利"), ("Mengniu", "蒙牛"), ("Bright", "光明"), ("Feihe", "飞鹤"), ("Junlebao", "君乐宝")],
        models=["金典", "特仑苏", "优倍", "星飞帆", "简醇"],
        specs=["{s}ml*12盒", "{s}g"],
        spec_vals=[200, 250, 800, 900],
        attrs={"口味": ["原味", "草莓味", "低脂"], "段位": ["1段", "2段", "3段"]},
        extra=["整箱", "营养早餐", "新鲜"],
        price=(39, 299),
    ),
    "运动鞋": dict(
        nouns=["运动鞋", "跑步鞋", "篮球鞋", "板鞋"],
        brands=[
            ("Nike", "耐克"),
            ("Adidas", "阿迪达斯"),
            ("Li-Ning", "李宁"),
            ("Anta", "安踏"),
            ("New Balance", "新百伦"),
        ],
        models=["Air Max {n}", "Ultraboost {n}", "韦德之道{n}", "KT{n}", "{n}574"],
        specs=["{s}码"],
        spec_vals=[38, 40, 42, 44],
        attrs={"颜色": ["黑白", "全黑", "白色", "灰色"], "适用": ["男款", "女款", "情侣"]},
        extra=["减震", "透气", "防滑", "官方旗舰"],
        price=(199, 1599),
    ),
    "连衣裙": dict(
        nouns=["连衣裙", "碎花裙", "长裙", "吊带裙"],
        brands=[("ONLY", "欧时力"), ("Vero Moda", "维莎曼"), ("UR", "优衣"), ("Peacebird", "太平鸟")],
        models=["2024夏季款", "法式", "小香风", "韩版"],
        specs=["{s}码"],
        spec_vals=["S", "M", "L", "XL"],
        attrs={"颜色": ["白色", "黑色", "碎花", "蓝色"], "材质": ["雪纺", "棉麻", "真丝"]},
        extra=["显瘦", "气质", "新款", "收腰"],
        price=(99, 899),
    ),
    "电饭煲": dict(
        nouns=["电饭煲", "电饭锅", "IH电饭煲"],
        brands=[("Midea", "美的"), ("SUPOR", "苏泊尔"), ("Joyoung", "九阳"), ("Panasonic", "松下")],
        models=["MB-FB{n}", "SF{n}FC", "F-{n}FY", "SR-{n}"],
        specs=["{s}L"],
        spec_vals=[3, 4, 5],
        attrs={"功能": ["预约", "柴火饭", "低糖"], "内胆": ["球釜", "不粘", "陶晶"]},
        extra=["家用", "智能", "多功能"],
        price=(199, 1299),
    ),
    "咖啡": dict(
        nouns=["咖啡", "速溶咖啡", "咖啡豆", "挂耳咖啡"],
        brands=[("Nestle", "雀巢"), ("Starbucks", "星巴克"), ("Saturnbird", "三顿半"), ("UCC", "悠诗诗")],
        models=["金牌", "超即溶{n}号", "特选", "黑咖啡"],
        specs=["{s}g", "{s}条装"],
        spec_vals=[30, 48, 100, 500],
        attrs={"口味": ["美式", "拿铁", "无糖", "原味"], "烘焙": ["中度", "深度"]},
        extra=["提神", "冻干", "办公室"],
        price=(29, 299),
    ),
    "面膜": dict(
        nouns=["面膜", "补水面膜", "睡眠面膜"],
        brands=[
            ("L'Oreal", "欧莱雅"),
            ("SK-II", "SK-II"),
            ("Proya", "珀莱雅"),
            ("Estee Lauder", "雅诗兰黛"),
            ("WINONA", "薇诺娜"),
        ],
        models=["玻尿酸", "前男友", "红石榴", "舒缓"],
        specs=["{s}片", "{s}ml"],
        spec_vals=[5, 10, 25, 75],
        attrs={"功效": ["补水", "保湿", "美白", "修护"], "肤质": ["干皮", "油皮", "敏感肌"]},
        extra=["男女通用", "正品", "礼盒"],
        price=(49, 1299),
    ),
    "猫粮": dict(
        nouns=["猫粮", "猫罐头", "冻干猫粮"],
        brands=[("Royal Canin", "皇家"), ("Orijen", "渴望"), ("Purina", "冠能"), ("Myfoodie", "麦富迪")],
        models=["成猫", "幼猫K36", "室内猫", "全价"],
        specs=["{s}kg", "{s}g*24罐"],
        spec_vals=[1.5, 2, 4, 10],
        attrs={"年龄": ["幼猫", "成猫", "全阶段"], "口味": ["鸡肉", "鱼肉", "三文鱼"]},
        extra=["无谷", "营养", "增肥发腮"],
        price=(39, 699),
    ),
    "电视": dict(
        nouns=["电视", "液晶电视", "智能电视"],
        brands=[("Xiaomi", "小米"), ("Hisense", "海信"), ("TCL", "TCL"), ("Sony", "索尼"), ("Skyworth", "创维")],
        models=["EA{n}", "E{n}K", "Q{n}C", "X{n}K", "A{n}"],
        specs=["{s}英寸"],
        spec_vals=[55, 65, 75, 85],
        attrs={"分辨率": ["4K", "8K"], "刷新率": ["120Hz", "144Hz"]},
        extra=["全面屏", "家用", "投屏", "语音"],
        price=(1299, 12999),
    ),
    "口红": dict(
        nouns=["口红", "唇釉", "唇膏"],
        brands=[
            ("YSL", "圣罗兰"),
            ("Dior", "迪奥"),
            ("MAC", "魅可"),
            ("Armani", "阿玛尼"),
            ("Perfect Diary", "完美日记"),
        ],
        models=["小金条{n}", "烈艳蓝金{n}", "子弹头{n}", "红管{n}"],
        specs=["{s}g"],
        spec_vals=[3, 3.5, 4],
        attrs={"色号": ["正红色", "豆沙色", "烂番茄", "枫叶红"], "质地": ["哑光", "滋润", "丝绒"]},
        extra=["礼盒", "显白", "送女友"],
        price=(69, 499),
    ),
    "行李箱": dict(
        nouns=["行李箱", "拉杆箱", "登机箱"],
        brands=[("Samsonite", "新秀丽"), ("Diplomat", "外交官"), ("90fen", "90分"), ("American Tourister", "美旅")],
        models=["{n}0系列", "铝框", "商务", "静音"],
        specs=["{s}寸"],
        spec_vals=[20, 24, 28],
        attrs={"材质": ["PC", "铝镁合金", "ABS"], "颜色": ["黑色", "银色", "玫瑰金"]},
        extra=["万向轮", "密码锁", "大容量"],
        price=(199, 2999),
    ),
    "吸尘器": dict(
        nouns=["吸尘器", "无线吸尘器", "扫地机器人"],
        brands=[("Dyson", "戴森"), ("Ecovacs", "科沃斯"), ("Roborock", "石头"), ("Dreame", "追觅")],
        models=["V{n}", "T{n}", "G{n}", "S{n}"],
        specs=["{s}Pa吸力"],
        spec_vals=[4000, 6000, 8000],
        attrs={"续航": ["60分钟", "90分钟", "180分钟"], "功能": ["扫拖一体", "自动集尘", "除螨"]},
        extra=["家用", "大吸力", "宠物家庭"],
        price=(599, 5999),
    ),
    "机械键盘": dict(
        nouns=["机械键盘", "游戏键盘", "无线键盘"],
        brands=[("Logitech", "罗技"), ("Razer", "雷蛇"), ("Cherry", "樱桃"), ("Keychron", "键克")],
        models=["G{n}", "K{n}", "MX{n}.0", "Q{n}"],
        specs=["{s}键"],
        spec_vals=[68, 87, 104, 108],
        attrs={"轴体": ["红轴", "青轴", "茶轴"], "连接": ["有线", "三模", "蓝牙"]},
        extra=["RGB背光", "热插拔", "电竞"],
        price=(149, 1599),
    ),
    "保温杯": dict(
        nouns=["保温杯", "水杯", "焖烧杯"],
        brands=[("THERMOS", "膳魔师"), ("ZOJIRUSHI", "象印"), ("Tiger", "虎牌"), ("Fuguang", "富光")],
        models=["JNL-{n}", "SM-{n}", "MMJ-{n}", "FGL-{n}"],
        specs=["{s}ml"],
        spec_vals=[350, 480, 500, 750],
        attrs={"材质": ["316不锈钢", "304不锈钢"], "颜色": ["白色", "黑色", "粉色"]},
        extra=["便携", "学生", "大容量", "刻字"],
        price=(59, 399),
    ),
    "洗衣液": dict(
        nouns=["洗衣液", "洗衣凝珠", "洗衣粉"],
        brands=[("Blue Moon", "蓝月亮"), ("OMO", "奥妙"), ("Liby", "立白"), ("Tide", "汰渍")],
        models=["深层洁净", "除菌除螨", "薰衣草"],
        specs=["{s}kg", "{s}颗"],
        spec_vals=[2, 3, 52, 100],
        attrs={"香型": ["薰衣草", "自然清香", "樱花"], "规格": ["家庭装", "替换装"]},
        extra=["持久留香", "护色", "机洗"],
        price=(19, 99),
    ),
    "儿童玩具": dict(
        nouns=["积木", "遥控车", "拼图", "毛绒玩具"],
        brands=[("LEGO", "乐高"), ("Bandai", "万代"), ("Hasbro", "孩之宝"), ("Keeppley", "奇妙")],
        models=["{n}系列", "城市组", "机甲", "恐龙"],
        specs=["{s}片", "{s}岁以上"],
        spec_vals=[3, 6, 100, 500],
        attrs={"适用": ["男孩", "女孩", "儿童"], "材质": ["ABS", "毛绒"]},
        extra=["益智", "生日礼物", "拼装"],
        price=(49, 1999),
    ),
    "投影仪": dict(
        nouns=["投影仪", "家用投影仪", "便携投影"],
        brands=[("XGIMI", "极米"), ("Dangbei", "当贝"), ("Epson", "爱普生"), ("BenQ", "明基")],
        models=["H{n}", "X{n}", "CB-{n}", "W{n}"],
        specs=["{s}流明", "{s}P"],
        spec_vals=[1080, 2000, 3000],
        attrs={"分辨率": ["1080P", "4K"], "类型": ["卧室", "办公"]},
        extra=["高清", "自动对焦", "投墙"],
        price=(999, 8999),
    ),
}

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
        # each brand keeps its own model line, so a model name points at one brand
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
                _title(rng, cat, spec, brand, noun, model, spec_str, attrs),
                cat,
                brand[1],
                brand[0],
                noun,
                attrs,
                round(price, 2),
            )
        )
    return products


@dataclass
class User:
    uid: str
    categories: list[str]
    weights: list[float]
    brand_pref: dict[str, str]


def _query_for(rng: random.Random, user: User, cat: str) -> tuple[str, dict]:
    """A query and what it asks for (noun, optional brand, optional attribute)."""
    spec = CATEGORIES[cat]
    noun = rng.choice(spec["nouns"])
    want: dict = {"noun": noun}
    words = [noun]
    r = rng.random()
    if r < 0.35:
        brand = next(b for b in spec["brands"] if b[1] == user.brand_pref[cat])
        bname = rng.choice([brand[1], brand[0].lower(), brand[0]])
        words.insert(0, bname)
        want["brand"] = brand[1]
    if rng.random() < 0.4:
        key = rng.choice(list(spec["attrs"]))
        val = rng.choice(spec["attrs"][key])
        words.append(val)
        want["attr"] = val
    return " ".join(words) if rng.random() < 0.5 else "".join(words), want


def _fit(p: Product, want: dict) -> float:
    score = 1.0 if p.noun == want["noun"] else 0.5
    if "brand" in want:
        score *= 1.0 if p.brand == want["brand"] else 0.2
    if "attr" in want:
        score *= 1.0 if want["attr"] in p.attrs.values() else 0.4
    return score


def simulate_clicks(
    products: list[Product], n_users: int = 400, days: int = 60, sessions_per_user: int = 12, seed: int = 11
) -> list[Event]:
    rng = random.Random(seed)
    by_cat: dict[str, list[Product]] = defaultdict(list)
    for p in products:
        by_cat[p.category].append(p)
    cats = list(CATEGORIES)
    events: list[Event] = []
    for u in range(n_users):
        k = rng.randint(1, 3)
        ucats = rng.sample(cats, k)
        user = User(
            f"U{u:04d}",
            ucats,
            [rng.uniform(0.5, 1.0) for _ in ucats],
            {c: rng.choice(CATEGORIES[c]["brands"])[1] for c in cats},
        )
        for _ in range(sessions_per_user):
            ts = START + rng.uniform(0, days * DAY)
            cat = rng.choices(ucats, user.weights)[0] if rng.random() < 0.9 else rng.choice(cats)
            query, want = _query_for(rng, user, cat)
            pool = by_cat[cat]
            # the shop's current engine: mostly relevant products, some noise, shuffled a bit
            shown = sorted(rng.sample(pool, min(40, len(pool))), key=lambda p: -_fit(p, want) - rng.uniform(0, 0.6))[
                :10
            ]
            for pos, p in enumerate(shown):
                t = ts + pos
                events.append(Event(user.uid, query, p.pid, "impression", t))
                prefer = 1.6 if p.brand == user.brand_pref[cat] else 0.7
                p_click = min(0.95, 0.45 * _fit(p, want) * prefer / (1 + 0.15 * pos))
                if rng.random() < p_click:
                    events.append(Event(user.uid, query, p.pid, "click", t + 5))
                    if rng.random() < 0.3 * prefer:
                        events.append(Event(user.uid, query, p.pid, "add_to_cart", t + 30))
                        if rng.random() < 0.5:
                            events.append(Event(user.uid, query, p.pid, "purchase", t + 120))
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
    ap = argparse.ArgumentParser(
        prog="python -m eval.sim.demo_data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
