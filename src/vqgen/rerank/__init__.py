"""Reranking text-to-image samples with an image–text model (CLIP-style)."""
