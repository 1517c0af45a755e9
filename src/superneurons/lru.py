"""A least-recently-used store bounded in bytes, keyed by content (the image caches' base)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch


def content_key(*parts: torch.Tensor | str) -> bytes:
    """A digest of tensors' values, shapes and dtypes (and of strings), in order."""
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        if isinstance(part, str):
            digest.update(part.encode())
            continue
        value = part.detach().to("cpu").contiguous()
        digest.update(f"{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


class ByteLRU:
    """Up to ``max_bytes`` of values (their size given by ``size_of``), least recently used
    evicted first; a value larger than the whole budget is not kept."""

    def __init__(self, max_bytes: int, size_of: Callable[[Any], int]) -> None:
        self.max_bytes, self.size_of = max_bytes, size_of
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        """The value of ``key`` (now the most recently used), or None."""
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: Hashable, value: Any) -> None:
        size = self.size_of(value)
        if key in self._entries:
            self.bytes -= self.size_of(self._entries.pop(key))
        if size > self.max_bytes:
            return
        self._entries[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= self.size_of(evicted)
