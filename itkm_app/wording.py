"""Counts in words: "1 camera", "2 cameras", "1,204 images" (never "1 cameras")."""

from __future__ import annotations

IRREGULAR = {"identity": "identities", "match": "matches", "person": "people"}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word``, in the plural unless ``n`` is 1 (``many`` overrides the plural)."""
    if n == 1:
        return f"1 {word}"
    return f"{n:,} {many or IRREGULAR.get(word) or word + 's'}"
