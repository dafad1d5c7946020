"""Text side of metarec: encoders, the on-disk embedding cache, item/user text templates."""

from metarec.text.cache import EmbeddingCache
from metarec.text.encoder import (
    HashingEncoder,
    SentenceTransformerEncoder,
    TextEncoder,
    make_encoder,
)
from metarec.text.templates import item_texts, render, user_texts

__all__ = [
    "EmbeddingCache",
    "HashingEncoder",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "item_texts",
    "make_encoder",
    "render",
    "user_texts",
]
