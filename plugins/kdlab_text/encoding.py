"""Raw text as a tensor, so that it travels with the other inputs (indexed, batched, moved to the device, cached by
example index) and a model with a tokenizer of its own can read it: UTF-8 bytes, uint8, one row per example,
zero-padded on the right (a text never holds the byte 0 after :func:`encode_text`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def encode_text(texts: Sequence[str], max_bytes: int | None = None) -> torch.Tensor:
    """``(N, B)`` uint8: each text's UTF-8 bytes (NUL characters dropped), cut at ``max_bytes`` on a character
    boundary, zero-padded to the longest row (``B >= 1``)."""
    rows = []
    for text in texts:
        raw = text.replace("\0", "").encode("utf-8")
        if max_bytes is not None and len(raw) > max_bytes:
            raw = raw[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")
        rows.append(raw)
    width = max([len(r) for r in rows] + [1])
    buf = bytearray(width * len(rows))
    for i, raw in enumerate(rows):
        buf[i * width: i * width + len(raw)] = raw
    return torch.frombuffer(buf, dtype=torch.uint8).reshape(len(rows), width).clone() if rows else \
        torch.zeros((0, 1), dtype=torch.uint8)


def decode_text(x: torch.Tensor) -> list[str]:
    """The texts of a ``(N, B)`` uint8 tensor made by :func:`encode_text` (on any device)."""
    if x.dtype != torch.uint8 or x.ndim != 2:
        raise ValueError(f"expected raw text as a uint8 tensor of shape (N, bytes), got {x.dtype} {tuple(x.shape)}")
    arr = x.detach().cpu().numpy()
    return [row.tobytes().rstrip(b"\0").decode("utf-8", errors="replace") for row in arr]
