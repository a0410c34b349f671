"""`python -m eval.perturb --queries FILE --out FILE --seed N`: a robustness set from judged queries.

Keeps the file's columns, rows and ids and changes only the query text: each
distinct query gets one perturbation, drawn (seeded, per query) from those that
apply to it, of the kinds shoppers produce:

- ``traditional``: simplified characters written traditional (蓝牙 → 藍牙);
- ``fullwidth``: Latin letters, digits and spaces in full-width forms
  (iphone15 → ｉｐｈｏｎｅ１５);
- ``pinyin``: one Han word typed as toneless pinyin (手机 → shouji);
- ``alias``: a brand in its other script, from a fixed list of well-known
  pairs (华为 ↔ huawei, 苹果 ↔ apple, …), independent of anything the engine
  mines from its catalog;
- ``units``: a unit in its other spelling (500ml ↔ 500毫升, 1.5kg ↔ 1.5千克);
- ``typo``: one Han character replaced by a homophone (耳机 → 耳鸡: the typo a
  pinyin input method makes; homophones among the characters of the file's
  own queries), or one Latin letter dropped, doubled or swapped.

A query no kind applies to stays as it is (kind ``none``).  ``FILE.log.tsv``
beside the output lists qid, kind, the original and the perturbed text.
"""

from __future__ import annotations

import csv
import hashlib
import re
import sys
from pathlib import Path

import numpy as np

from indexer.text import opencc_char_table
from core.cli import command

KINDS = ("traditional", "fullwidth", "pinyin", "alias", "units", "typo")
BRANDS = (
    ("华为", "huawei"),
    ("苹果", "apple"),
    ("小米", "xiaomi"),
    ("三星", "samsung"),
    ("耐克", "nike"),
    ("阿迪达斯", "adidas"),
    ("联想", "lenovo"),
    ("索尼", "sony"),
    ("美的", "midea"),
    ("海尔", "haier"),
    ("格力", "gree"),
    ("欧莱雅", "loreal"),
    ("兰蔻", "lancome"),
    ("李宁", "lining"),
    ("安踏", "anta"),
    ("戴尔", "dell"),
    ("惠普", "hp"),
    ("佳能", "canon"),
    ("尼康", "nikon"),
    ("飞利浦", "philips"),
    ("西门子", "siemens"),
    ("松下", "panasonic"),
    ("戴森", "dyson"),
    ("大疆", "dji"),
    ("优衣库", "uniqlo"),
    ("宜家", "ikea"),
    ("迪士尼", "disney"),
    ("乐高", "lego"),
    ("雀巢", "nestle"),
    ("可口可乐", "cocacola"),
    ("星巴克", "starbucks"),
    ("华硕", "asus"),
    ("罗技", "logitech"),
    ("博世", "bosch"),
    ("九阳", "joyoung"),
    ("海信", "hisense"),
    ("荣耀", "honor"),
    ("魅族", "meizu"),
    ("一加", "oneplus"),
    ("微软", "microsoft"),
)
UNITS = (
    ("ml", "毫升"),
    ("kg", "千克"),
    ("g", "克"),
    ("cm", "厘米"),
    ("mm", "毫米"),
    ("l", "升"),
    ("w", "瓦"),
    ("v", "伏"),
    ("mah", "毫安"),
    ("m", "米"),
    ("寸", "英寸"),
)
_HAN = re.compile(r"[\u4e00-\u9fff]")
_HAN_WORD = re.compile(r"[\u4e00-\u9fff]{2,}")
_UNIT = re.compile(
    r"(\d+(?:\.\d+)?)\s*(" + "|".join(sorted({u for p in UNITS for u in p}, key=len, reverse=True)) + r")(?![a-zA-Z])",
    re.IGNORECASE,
)
_LATIN_WORD = re.compile(r"[A-Za-z]{4,}")


class Perturber:
    def __init__(self, texts, seed: int = 0):
        self.seed = seed
        self._s2t = opencc_char_table("STCharacters")
        from pypinyin import lazy_pinyin

        self._py = lambda s: lazy_pinyin(s, errors="ignore")  # noqa: E731
        self._homophones: dict[str, list[str]] = {}
        for ch in sorted({c for t in texts for c in t if _HAN.match(c)}):
            syl = self._py(ch)
            if syl:
                self._homophones.setdefault(syl[0], []).append(ch)

    def rng(self, key: str) -> np.random.Generator:
        h = int.from_bytes(hashlib.sha256(f"{self.seed}:{key}".encode()).digest()[:8], "little")
        return np.random.default_rng(h)

    def perturb(self, text: str, key: str) -> tuple[str, str]:
        """(kind, perturbed text) for one query; the same key and seed always give the same answer."""
        rng = self.rng(key)
        options = []
        for kind in KINDS:
            out = getattr(self, f"_{kind}")(text, rng)
            if out is not None and out != text:
                options.append((kind, out))
        if not options:
            return "none", text
        return options[int(rng.integers(len(options)))]

    # each returns the perturbed text or None when the kind does not apply
    def _traditional(self, text, rng):
        out = text.translate(self._s2t)
        return out if out != text else None

    def _fullwidth(self, text, rng):
        if not re.search(r"[A-Za-z0-9]", text):
            return None
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in text)

    def _pinyin(self, text, rng):
        words = _words(text)
        if not words:
            return None
        w = words[int(rng.integers(len(words)))]
        return text.replace(w, "".join(self._py(w)), 1)

    def _alias(self, text, rng):
        low = text.lower()
        found = [(a, b) for a, b in BRANDS if a in text] + [
            (b, a) for a, b in BRANDS if re.search(rf"(?<![a-z]){b}(?![a-z])", low)
        ]
        if not found:
            return None
        src, dst = found[int(rng.integers(len(found)))]
        if src.isascii():
            return re.sub(rf"(?<![a-zA-Z]){src}(?![a-zA-Z])", dst, text, count=1, flags=re.IGNORECASE)
        return text.replace(src, dst, 1)

    def _units(self, text, rng):
        m = _UNIT.search(text)
        if not m:
            return None
        unit = m.group(2).lower()
        other = next((b if unit == a else a for a, b in UNITS if unit in (a, b)), None)
        if other is None:
            return None
        return text[: m.start()] + m.group(1) + other + text[m.end() :]

    def _typo(self, text, rng):
        spots = [i for i, c in enumerate(text) if _HAN.match(c)]
        rng_order = rng.permutation(len(spots)) if spots else []
        for j in rng_order:
            i = spots[int(j)]
            syl = self._py(text[i])
            alts = [c for c in self._homophones.get(syl[0] if syl else "", []) if c != text[i]]
            if alts:
                return text[:i] + alts[int(rng.integers(len(alts)))] + text[i + 1 :]
        words = list(_LATIN_WORD.finditer(text))
        if not words:
            return None
        m = words[int(rng.integers(len(words)))]
        w, p = m.group(0), int(rng.integers(1, len(m.group(0)) - 1))
        edit = int(rng.integers(3))
        new = (
            w[:p] + w[p + 1 :]
            if edit == 0
            else (w[:p] + w[p] + w[p:] if edit == 1 else w[: p - 1] + w[p] + w[p - 1] + w[p + 1 :])
        )
        return text[: m.start()] + new + text[m.end() :]


def _words(text: str) -> list[str]:
    import jieba

    return [w for w in jieba.lcut(text) if _HAN_WORD.fullmatch(w)]


def perturb_file(src: Path, dst: Path, seed: int) -> dict[str, int]:
    """Write the perturbed copy of ``src`` and its log; returns the count per kind."""
    delimiter = "," if src.suffix.lower() == ".csv" else "\t"
    with open(src, encoding="utf-8", newline="") as f:
        rows = list(
            csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        )
    if not rows or "query" not in rows[0]:
        raise ValueError(f"{src}: the header needs a 'query' column")
    header = rows[0]
    qcol = header.index("query")
    idcol = header.index("qid") if "qid" in header else None
    p = Perturber([r[qcol] for r in rows[1:] if len(r) > qcol], seed)
    done: dict[tuple, tuple[str, str]] = {}
    counts: dict[str, int] = {}
    log = []
    for r in rows[1:]:
        if len(r) <= qcol:
            continue
        key = (r[idcol] if idcol is not None else "", r[qcol])
        if key not in done:
            done[key] = p.perturb(r[qcol], f"{key[0]}|{key[1]}")
            counts[done[key][0]] = counts.get(done[key][0], 0) + 1
            log.append((key[0], done[key][0], r[qcol], done[key][1]))
        r[qcol] = done[key][1]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(
            f,
            delimiter=delimiter,
            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL,
            escapechar="\\" if delimiter == "\t" else None,
            lineterminator="\n",
        )
        w.writerows(rows)
    with open(dst.with_name(dst.name + ".log.tsv"), "w", encoding="utf-8") as f:
        f.write("qid\tkind\toriginal\tperturbed\n")
        for q, kind, a, b in log:
            f.write(f"{q}\t{kind}\t{a}\t{b}\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.perturb", __doc__, False)
    ap.add_argument("--queries", required=True, help="judged queries (TSV/CSV with a 'query' column)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    src = Path(args.queries)
    if not src.is_file():
        print(f"error: {src} not found", file=sys.stderr)
        return 2
    try:
        counts = perturb_file(src, Path(args.out), args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out} ({sum(counts.values())} queries: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
