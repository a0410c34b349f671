"""Query → candidates → fusion → rerank → personalize → hits."""

from engine.search import Hit, SearchEngine

__all__ = ["Hit", "SearchEngine"]
