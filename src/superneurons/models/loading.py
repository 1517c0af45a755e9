"""Load a supported VLM and its processor offline: embedded default, local path or HF cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from superneurons.errors import ConfigError, ModelError

EMBEDDED = "embedded"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model is neither a local directory nor in the Hugging Face cache."""


@dataclass
class ModelFiles:
    """A supported model opened without its weights: what checking inputs needs."""

    model_id: str
    path: Path
    processor: object
    config: object  # the transformers config
    architecture: str  # the adapter's name


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    model_id: str
    path: Path
    revision: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def config(self) -> object:
        return self.model.config

    @property
    def architecture(self) -> str:
        from superneurons.models.adapters import adapter_for

        return adapter_for(self.model).name


def resolve_model_path(model_id: str | None) -> tuple[str, Path]:
    """(id, local directory) for ``model_id``; never downloads."""
    if model_id in (None, EMBEDDED):
        from superneurons.models.embedded import default_model_dir

        return EMBEDDED, default_model_dir()
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: not a transformers checkpoint")
        return model_id, path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return model_id, Path(snapshot_download(model_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelNotFoundError(
            f"model {model_id!r} is not a local directory and not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}). Download it where there is network, e.g. "
            f"`hf download {model_id}`, then copy the cache here or pass its directory."
        ) from None


def _revision(path: Path) -> str:
    """The snapshot's commit hash when loaded from the HF cache, else the embedded weights' hash."""
    if path.parent.name == "snapshots":
        return path.name
    marker = path / "superneurons.json"
    if marker.is_file():
        return json.loads(marker.read_text()).get("weights", "local")
    return "local"


def check_supported(path: Path):
    """The adapter of the checkpoint at ``path``; refused before loading anything when its
    architecture has none."""
    from superneurons.models.adapters import ADAPTERS, UnsupportedModelError, supported_classes

    config = path / "config.json"
    try:
        document = json.loads(config.read_text(encoding="utf-8"))
        architectures = document.get("architectures") or []
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise ModelError(f"{config}: not a valid model config ({error})") from None
    if not isinstance(architectures, list) or not set(architectures) & set(supported_classes()):
        raise UnsupportedModelError(
            f"{path}: architecture {architectures or 'unknown'} has no superneurons adapter; "
            f"supported: {', '.join(supported_classes())}"
        )
    return next(a for a in ADAPTERS.values() if set(architectures) & set(a.model_classes))


def check_model(model_id: str | None):
    """(id, local directory, adapter) of a supported model, checked without loading weights."""
    model_id, path = resolve_model_path(model_id)
    return model_id, path, check_supported(path)


def _processor(path: Path, adapter):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path)
    except ImportError as error:  # a processor importing a package transformers does not need
        message = next((line for line in str(error).splitlines() if line.strip()), "ImportError")
        install = f"; pip install 'superneurons[{adapter.extra}]'" if adapter.extra else ""
        raise ModelError(
            f"{path}: the {adapter.name} processor needs a package that is not installed "
            f"({message.strip()}){install}"
        ) from None


def _damaged(path: Path, error: Exception) -> ModelError:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ModelError(f"{path}: cannot load the model ({message})")


def open_model(model_id: str | None) -> ModelFiles:
    """The processor and config of a supported model, for checking inputs before the (slow)
    weights load."""
    from transformers import AutoConfig

    model_id, path, adapter = check_model(model_id)
    processor = _processor(path, adapter)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise _damaged(path, error) from None
    return ModelFiles(model_id, path, processor, config, adapter.name)


def pick_device(device: str = "auto") -> torch.device:
    """The torch device for ``device`` ("auto": CUDA when there is one); ConfigError when it is
    unknown or not on this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto"
        ) from None
    available = {
        "cpu": lambda: True,
        "cuda": lambda: (
            torch.cuda.is_available() and (chosen.index or 0) < torch.cuda.device_count()
        ),
        "mps": lambda: torch.backends.mps.is_available(),
    }
    if not available.get(chosen.type, lambda: False)():
        raise ConfigError(f"device {device!r} is not available on this machine")
    return chosen


def load_model(
    model_id: str | None = None, dtype: str = "fp32", device: str = "auto"
) -> LoadedModel:
    """Processor and model (eval mode) for ``model_id``; the embedded default when None."""
    from transformers import AutoModelForImageTextToText

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    target = pick_device(device)
    model_id, path, adapter = check_model(model_id)
    processor = _processor(path, adapter)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype])
    except (OSError, ValueError, KeyError) as error:  # a damaged or incomplete checkpoint
        raise _damaged(path, error) from None
    model = model.to(target).eval()
    return LoadedModel(model, processor, model_id, path, _revision(path))
