"""Load a supported VLM and its processor offline: embedded default, local path or HF cache."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from superneurons.errors import ConfigError, ModelError

EMBEDDED = "embedded"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# accelerate's placement strategies for a model larger than one device (docs/scale.md).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


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
    # Where a device map's disk-offloaded weights live while the model does (removed with it).
    offload: tempfile.TemporaryDirectory | None = None

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


def read_device_map(value: str) -> str | dict[str, str | int]:
    """``--device-map``: a strategy name, or a JSON file of ``{module name: device}``."""
    if value in DEVICE_MAP_STRATEGIES:
        return value
    path = Path(value)
    if not path.is_file():
        raise ConfigError(
            f"--device-map {value}: neither one of {', '.join(DEVICE_MAP_STRATEGIES)} nor a JSON "
            "file of {module: device}"
        )
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"--device-map {path}: not a JSON file ({error})") from None
    check_device_map_value(mapping, f"--device-map {path}")
    return mapping


def check_device_map_value(device_map: object, what: str = "device_map") -> None:
    """Refuse a device map that is neither a strategy nor ``{module: device}`` with devices
    (cpu, disk, cuda:N or a GPU index) this machine has."""
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ConfigError(f"{what}: {device_map!r} is not one of {DEVICE_MAP_STRATEGIES}")
        return
    if not isinstance(device_map, dict) or not device_map:
        raise ConfigError(f"{what}: give a strategy or a non-empty {{module name: device}} object")
    for module, device in device_map.items():
        if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
            device = f"cuda:{device}"
        if not isinstance(device, str):
            raise ConfigError(f"{what}: {module!r}: {device!r} is not a device")
        if device != "disk":
            try:
                pick_device(device)
            except ConfigError as error:
                raise ConfigError(f"{what}: {module!r}: {error}") from None


def check_device_map(model: ModelFiles | LoadedModel, device_map: str | dict) -> None:
    """Refuse an explicit device map that names a module the model does not have or leaves a
    weight unplaced (checked on an empty model, before any weight loads)."""
    if isinstance(device_map, str):
        return
    if isinstance(model, LoadedModel):
        names = [n for n, _ in model.model.named_parameters()]
        modules = {n for n, _ in model.model.named_modules()}
    else:
        from accelerate import init_empty_weights
        from transformers import AutoModelForImageTextToText

        with init_empty_weights():
            empty = AutoModelForImageTextToText.from_config(model.config)
        names = [n for n, _ in empty.named_parameters()]
        modules = {n for n, _ in empty.named_modules()}
    unknown = [key for key in device_map if key not in modules and key not in names]
    if unknown:
        raise ConfigError(
            f"device map: the model has no module {unknown[0]!r} ({len(unknown)} unknown "
            f"name(s)); its top modules: {sorted(m for m in modules if m and '.' not in m)}"
        )

    def placed(name: str) -> bool:
        return any(key in ("", name) or name.startswith(key + ".") for key in device_map)

    missing = [name for name in names if not placed(name)]
    if missing:
        raise ConfigError(
            f"device map: {len(missing)} weight(s) are not placed, {missing[0]!r} first; map "
            'every module ("" places the whole model)'
        )


def load_model(
    model_id: str | None = None,
    dtype: str = "fp32",
    device: str = "auto",
    device_map: str | dict[str, str | int] | None = None,
) -> LoadedModel:
    """Processor and model (eval mode) for ``model_id``; the embedded default when None.

    ``device_map`` (accelerate's big-model loading: a strategy or ``{module: device}``) places
    the layers over several devices, the CPU or the disk, instead of all on ``device``."""
    from transformers import AutoModelForImageTextToText

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    target = pick_device(device)
    model_id, path, adapter = check_model(model_id)
    processor = _processor(path, adapter)
    placement, offload = {}, None
    if device_map is not None:
        check_device_map_value(device_map)
        offload = tempfile.TemporaryDirectory(prefix="superneurons-offload-")
        placement = {"device_map": device_map, "offload_folder": offload.name}
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype], **placement)
    except (OSError, ValueError, KeyError) as error:  # a damaged or incomplete checkpoint
        raise _damaged(path, error) from None
    if device_map is None:
        model = model.to(target)
    return LoadedModel(model.eval(), processor, model_id, path, _revision(path), offload)
