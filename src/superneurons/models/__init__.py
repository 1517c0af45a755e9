"""Model loading and per-architecture adapters."""

from superneurons.models.adapters import (
    ADAPTERS,
    SITES,
    Adapter,
    UnsupportedModelError,
    adapter_for,
)
from superneurons.models.embedded import default_model_dir

__all__ = [
    "ADAPTERS",
    "SITES",
    "Adapter",
    "UnsupportedModelError",
    "adapter_for",
    "default_model_dir",
]
