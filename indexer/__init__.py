"""Catalog → text → indexes: reading catalogs, tokenizing titles, building and storing indexes."""
