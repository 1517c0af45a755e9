"""superneurons: answer categorical visual questions from a VLM's own super neurons."""

__version__ = "0.1.0"
