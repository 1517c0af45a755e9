"""Model loading and per-architecture adapters."""

from superneurons.models.embedded import default_model_dir

__all__ = ["default_model_dir"]
