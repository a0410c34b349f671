"""Query → candidates → fusion → rerank → personalize → hits."""

__all__ = ["Hit", "QueryResult", "QueryError", "SearchEngine", "EcomsearchError"]


def __getattr__(name: str):
    # imported on first use, so `engine.rerank` loads without the BM25/FAISS stack (e.g. on a GPU box for training)
    if name in ("SearchEngine",):
        from engine import search

        return getattr(search, name)
    if name in __all__:
        from engine import types

        return getattr(types, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
