"""The embedded default model (LLaVA architecture, trained here on synthetic scenes)."""

from superneurons.models.embedded.shipped import default_model_dir

__all__ = ["default_model_dir"]
