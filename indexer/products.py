"""The product table stored with every index: ids, titles and filterable fields as columns.

Strings are kept as one UTF-8 blob plus offsets, memory-mapped on load, so
opening a million-product index reads no per-product Python objects; only
the hits of a query are decoded.  Category and brand are dictionary-coded
so that a filter is one vectorized comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from core.formats.catalog import Catalog


class StringColumn:
    """An immutable list of strings backed by a UTF-8 blob and int64 offsets."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self._blob = blob
        self._offsets = offsets

    @classmethod
    def from_strings(cls, values: Sequence[str]) -> "StringColumn":
        encoded = [v.encode("utf-8") for v in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        lo, hi = self._offsets[i], self._offsets[i + 1]
        return self._blob[lo:hi].tobytes().decode("utf-8")

    def extend(self, values: Sequence[str]) -> "StringColumn":
        """A new column with ``values`` after these (the stored bytes are copied, not decoded)."""
        new = StringColumn.from_strings(values)
        offsets = np.concatenate([np.asarray(self._offsets), new._offsets[1:] + self._offsets[-1]])
        return StringColumn(np.concatenate([np.asarray(self._blob), new._blob]), offsets)

    def take(self, rows: Iterable[int]) -> list[str]:
        return [self[int(i)] for i in rows]

    def tolist(self) -> list[str]:
        return self.take(range(len(self)))

    def save(self, folder: Path, name: str) -> None:
        self._blob.tofile(folder / f"{name}.utf8")
        np.save(folder / f"{name}.offsets.npy", self._offsets)

    @classmethod
    def load(cls, folder: Path, name: str, mmap: bool = True) -> "StringColumn":
        path = folder / f"{name}.utf8"
        if path.stat().st_size == 0:
            blob = np.zeros(0, dtype=np.uint8)
        elif mmap:
            blob = np.memmap(path, dtype=np.uint8, mode="r")
        else:
            blob = np.fromfile(path, dtype=np.uint8)
        return cls(blob, np.load(folder / f"{name}.offsets.npy", mmap_mode="r" if mmap else None))


def _encode(values: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    vocab = sorted({v for v in values if v})
    pos = {v: i for i, v in enumerate(vocab)}
    return np.array([pos[v] if v else -1 for v in values], dtype=np.int32), vocab


class ProductTable:
    """Ids, titles, categories, brands and prices of an index's products, by row."""

    def __init__(
        self,
        ids: StringColumn,
        titles: StringColumn,
        category_codes: np.ndarray,
        categories: list[str],
        brand_codes: np.ndarray,
        brands: list[str],
        prices: np.ndarray,
    ):
        self.ids = ids
        self.titles = titles
        self.category_codes = category_codes
        self.categories = categories
        self.brand_codes = brand_codes
        self.brands = brands
        self.prices = prices
        self._row_of: dict[str, int] | None = None
        self._code_of: dict[str, dict[str, int]] = {}  # per column, value → code (built once)

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> "ProductTable":
        cat_codes, cats = _encode(catalog.categories)
        brand_codes, brands = _encode(catalog.brands)
        return cls(
            StringColumn.from_strings(catalog.ids),
            StringColumn.from_strings(catalog.titles),
            cat_codes,
            cats,
            brand_codes,
            brands,
            np.asarray(catalog.prices, dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, catalog: Catalog) -> "ProductTable":
        """A new table with ``catalog``'s products as rows len(self)..; category/brand codes extended."""

        def extend(codes, vocab, values):
            vocab = list(vocab)
            pos = {v: i for i, v in enumerate(vocab)}
            new = [pos.setdefault(v, len(pos)) if v else -1 for v in values]
            vocab += [v for v, i in sorted(pos.items(), key=lambda kv: kv[1]) if i >= len(vocab)]
            return np.concatenate([np.asarray(codes), np.array(new, dtype=np.int32)]), vocab

        cat_codes, cats = extend(self.category_codes, self.categories, catalog.categories)
        brand_codes, brands = extend(self.brand_codes, self.brands, catalog.brands)
        return ProductTable(
            self.ids.extend(catalog.ids),
            self.titles.extend(catalog.titles),
            cat_codes,
            cats,
            brand_codes,
            brands,
            np.concatenate([np.asarray(self.prices), np.asarray(catalog.prices, dtype=np.float64)]),
        )

    def row_map(self) -> dict[str, int]:
        """Product id -> row, built once.  An id added again after its delete has two rows: the newest
        answers (the older one is :meth:`superseded_rows`)."""
        if self._row_of is None:
            self._row_of = {pid: i for i, pid in enumerate(self.ids.tolist())}
        return self._row_of

    def superseded_rows(self) -> np.ndarray:
        """Rows whose id has a newer row (a deleted product added again before the next full rebuild): never
        searched.  Empty for a table without repeated ids (the usual case: one length comparison)."""
        row_of = self.row_map()
        if len(row_of) == len(self):
            return np.zeros(0, dtype=np.int64)
        newest = np.fromiter((row_of[pid] for pid in self.ids.tolist()), dtype=np.int64, count=len(self))
        return np.flatnonzero(newest != np.arange(len(self)))

    def columns(self, row: int) -> dict:
        """The category, brand and price of a row (None where the catalog has none)."""
        c, b, p = int(self.category_codes[row]), int(self.brand_codes[row]), float(self.prices[row])
        return {
            "category": self.categories[c] if c >= 0 else None,
            "brand": self.brands[b] if b >= 0 else None,
            "price": p if p == p else None,
        }

    def row_of(self, pid: str) -> int:
        """Row of a product id (KeyError if absent)."""
        return self.row_map()[pid]

    def column(self, name: str) -> tuple[np.ndarray, list[str]]:
        """(codes per row, values) of the ``category`` or ``brand`` column."""
        if name == "category":
            return self.category_codes, self.categories
        if name == "brand":
            return self.brand_codes, self.brands
        raise KeyError(name)

    def codes_of(self, name: str, values: str | Sequence[str]) -> list[int]:
        """The codes of ``values`` in a column (values the catalog does not have are left out)."""
        pos = self._code_of.get(name)
        if pos is None:
            pos = self._code_of[name] = {v: i for i, v in enumerate(self.column(name)[1])}
        wanted = [values] if isinstance(values, str) else list(values)
        return [pos[v] for v in wanted if v in pos]

    def mask(
        self,
        category: str | Sequence[str] | None = None,
        brand: str | Sequence[str] | None = None,
        price_min: float | None = None,
        price_max: float | None = None,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Boolean mask of the products that pass every given filter (of ``rows`` only, in their order, when
        given)."""
        n = len(self) if rows is None else len(rows)
        keep = np.ones(n, dtype=bool)
        for name, values in (("category", category), ("brand", brand)):
            if values is not None:
                codes = self.column(name)[0]
                keep &= np.isin(codes if rows is None else codes[rows], self.codes_of(name, values))
        if price_min is not None or price_max is not None:
            prices = self.prices if rows is None else self.prices[rows]
            if price_min is not None:
                keep &= prices >= price_min  # NaN (no price) fails a price filter
            if price_max is not None:
                keep &= prices <= price_max
        return keep

    def save(self, folder: Path) -> None:
        self.ids.save(folder, "ids")
        self.titles.save(folder, "titles")
        np.save(folder / "category_codes.npy", self.category_codes)
        np.save(folder / "brand_codes.npy", self.brand_codes)
        np.save(folder / "prices.npy", self.prices)
        (folder / "facets.json").write_text(
            json.dumps({"categories": self.categories, "brands": self.brands}, ensure_ascii=False), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> "ProductTable":
        facets = json.loads((folder / "facets.json").read_text(encoding="utf-8"))
        mode = "r" if mmap else None
        return cls(
            StringColumn.load(folder, "ids", mmap),
            StringColumn.load(folder, "titles", mmap),
            np.load(folder / "category_codes.npy", mmap_mode=mode),
            facets["categories"],
            np.load(folder / "brand_codes.npy", mmap_mode=mode),
            facets["brands"],
            np.load(folder / "prices.npy", mmap_mode=mode),
        )
