"""The model directory is the artifact: ONNX model, Keras model, config, thresholds, metrics, provenance.

Reading it needs no TensorFlow. Layout::

    MODEL_DIR/config.json       training config + what inference needs (channels, pad multiple, receptive field)
    MODEL_DIR/model.onnx        input `image` NHWC float32 in [0, 1], output `mask` (sigmoid probabilities)
    MODEL_DIR/model.keras       the trained Keras model (training side)
    MODEL_DIR/thresholds.json   probability thresholds chosen on the validation split
    MODEL_DIR/metrics.json      validation metrics; history.csv and curves.png; data.json; versions.json
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nuclei.config import MODEL_FORMAT_VERSION
from nuclei.core.normalize import LEGACY, Normalization
from nuclei.core.thresholds import Thresholds
from nuclei.errors import ModelError

DEFAULT_MODEL_NAME = "nuclei-generalist"
# With the default model, colour brightfield images (H&E-like stained tissue) go to this one: specialised on
# DSB2018's stained tiles, it scores AP@0.5 0.685 on unseen ones where the generalist gets 0.37 (its model card).
STAINED_MODEL_NAME = "nuclei-stained"
NO_MODEL = "none"
INT8_FILE = "model.int8.onnx"
# Shipped as package data, so a plain `pip install` (not only a source checkout) has a default model.
SHIPPED_MODELS = Path(__file__).resolve().parent / "assets" / "models"


@dataclass(frozen=True)
class ModelDir:
    """What inference needs to know about a trained model."""

    path: Path
    config: dict[str, Any]
    thresholds: Thresholds
    onnx_sha256: str
    int8_sha256: str | None = None  # model.int8.onnx: kept only if as good on validation (see quantize.py)

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def int8_path(self) -> Path:
        return self.path / INT8_FILE

    @property
    def channels(self) -> list[str]:
        return list(self.config["channels"])

    @property
    def pad_multiple(self) -> int:
        return int(self.config["pad_multiple"])

    @property
    def normalization(self) -> Normalization:
        """How inputs are scaled; models from before normalisation was recorded scale by the dtype's range."""
        found = self.config.get("normalization")
        return Normalization(**found) if found else LEGACY

    @property
    def nucleus_diameter(self) -> float | None:
        """Median nucleus diameter (px) of the training images: `--diameter` rescales images to it."""
        found = self.config.get("nucleus_diameter")
        return float(found) if found else None

    @property
    def receptive_field(self) -> int:
        return int(self.config["receptive_field"])

    @property
    def version(self) -> str:
        """Name and content hash: which model made a mask, even after retraining under the same name."""
        return f"{self.path.name}@{self.onnx_sha256[:12]}"


def sha256_file(path: Path) -> str:
    """The file's sha256, computed once per process while its size and modification time stay the same
    (every batch of a run loads the model directory: 10 MB of hashing each time otherwise)."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: missing") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc


def write_json(path: Path, data: Any) -> None:
    """Write atomically (temp file + rename): a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def load_model_dir(path: str | Path) -> ModelDir:
    """Read and check a model directory; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: model directory does not exist")
    config = read_json(path / "config.json")
    if config.get("model_format_version") != MODEL_FORMAT_VERSION:
        raise ModelError(
            f"{path / 'config.json'}: model format {config.get('model_format_version')!r}, "
            f"this nuclei reads {MODEL_FORMAT_VERSION}"
        )
    _check_config(config, path / "config.json")
    onnx_path = path / "model.onnx"
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: missing (export the model first)")
    thresholds_file = path / "thresholds.json"
    try:
        thresholds = Thresholds.from_dict(read_json(thresholds_file)) if thresholds_file.exists() else Thresholds()
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{thresholds_file}: not valid thresholds ({exc})") from exc
    int8 = path / INT8_FILE
    return ModelDir(path=path, config=config, thresholds=thresholds, onnx_sha256=sha256_file(onnx_path),
                    int8_sha256=sha256_file(int8) if int8.is_file() else None)


def model_destination(out: str | Path, name: str) -> Path:
    """OUT/NAME, where training or fine-tuning publishes a model: NAME must be one plain folder name, new or a
    model directory of nuclei's, inside OUT. ``--name .`` once renamed the whole OUT folder (another model in it)
    aside and lost it. Raises ModelError naming the name and the reason, before any work."""
    if problem := _name_problem(name):
        raise ModelError(f"model name {name!r}: {problem}")
    final = Path(out) / name
    if final.is_symlink():
        raise ModelError(f"model name {name!r}: {final} is a symbolic link (to {os.readlink(final)}); a model is "
                         "published as a folder of its own in --out: give another name")
    if os.path.dirname(os.path.realpath(final)) != os.path.realpath(out):
        raise ModelError(f"model name {name!r}: {final} resolves outside {out}; give one new folder name")
    if final.exists() and not is_model_dir(final):
        what = "a folder that is not a model directory (no config.json of a nuclei model)" if final.is_dir() \
            else "a file"
        raise ModelError(f"model name {name!r}: {final} is {what}; publishing would replace it: give another "
                         "name or move it")
    return final


def _name_problem(name: str) -> str | None:
    """Why ``name`` is not one plain new folder name (None when it is)."""
    if not name or not name.strip():
        return "is empty; give the new model directory's name"
    if name in (".", ".."):
        return f"names {'the output folder itself' if name == '.' else 'its parent'}, not a new folder in it"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "holds a path separator; give one folder name, and the parent folder with --out"
    if name.startswith("."):
        return "is hidden (a leading dot): nuclei keeps its own work folders there (.NAME.partial, .NAME.old)"
    if not name.isprintable() or name != name.strip():
        return "holds control characters or leading/trailing spaces"
    return None


def is_model_dir(path: Path) -> bool:
    """A folder holding a nuclei model's config.json (what publishing may replace)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return path.is_dir() and isinstance(config, dict) and "model_format_version" in config


INFERENCE_KEYS = ("channels", "pad_multiple", "receptive_field")  # what config.json must give inference


def _check_config(config: Any, path: Path) -> None:
    """config.json gives what inference needs, in usable form: a missing key was a KeyError traceback after
    the store was created, a bad normalisation an error after it too."""
    if not isinstance(config, dict):
        raise ModelError(f"{path}: not a JSON object")
    missing = [key for key in INFERENCE_KEYS if key not in config]
    if missing:
        raise ModelError(f"{path}: missing {', '.join(repr(k) for k in missing)}, which inference needs (export "
                         "the model again with this nuclei)")
    for key in ("pad_multiple", "receptive_field"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
            raise ModelError(f"{path}: {key!r} must be a positive integer, not {config[key]!r}")
    if not isinstance(config["channels"], list) or not config["channels"]:
        raise ModelError(f"{path}: 'channels' must be a non-empty list of output names")
    try:
        Normalization(**(config.get("normalization") or {}))
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        reason = "; ".join(str(exc).splitlines()[1:3]) or str(exc)
        raise ModelError(f"{path}: 'normalization' is not usable ({reason})") from exc


def default_model_path() -> Path | None:
    """$NUCLEI_MODEL, else the model shipped with the package, else None."""
    if env := os.environ.get("NUCLEI_MODEL"):
        return Path(env)
    shipped = SHIPPED_MODELS / DEFAULT_MODEL_NAME
    return shipped if (shipped / "model.onnx").is_file() else None


def resolve_model(path: str | Path | None) -> ModelDir:
    """The model a run should use: the one given, or the project's default model."""
    if path is None:
        path = default_model_path()
        if path is None:
            missing = SHIPPED_MODELS / DEFAULT_MODEL_NAME
            raise ModelError(f"no --model given and no default model is installed ({missing})")
    return load_model_dir(path)


def resolve_stained_model(value: str | None, model: str | Path | None) -> ModelDir | None:
    """The model for stained colour brightfield images: ``value`` names one, or "none"; "default" (or None)
    means the shipped one when the default model is in use (no ``model`` and no $NUCLEI_MODEL), else none."""
    if value == NO_MODEL:
        return None
    if value not in (None, "default"):
        return load_model_dir(value)
    shipped = SHIPPED_MODELS / STAINED_MODEL_NAME
    if model is not None or os.environ.get("NUCLEI_MODEL") or not (shipped / "model.onnx").is_file():
        return None
    return load_model_dir(shipped)
