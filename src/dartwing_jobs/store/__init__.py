"""Storage: one ``Store`` contract (``base``), one module per backend."""

from __future__ import annotations

from typing import Any

from .base import Store


def open_store(url: str, **options: Any) -> Store:
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url, **options)
    if url.startswith(("postgresql", "postgres:")):
        from .postgres import PostgresStore

        return PostgresStore(url, **options)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")


__all__ = ["Store", "open_store"]
