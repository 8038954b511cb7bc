"""Loading and publishing weights: ``from_pretrained`` / ``download`` / the weights registry / torch.hub entrypoints.

One resolver, :func:`load_state_and_config`, turns anything a user may hold into ``(state dict in our key names,
UniSegConfig, source)``:

* a local ``save_pretrained`` folder or ``.safetensors`` file (our format, :mod:`uniseg_hub.formats.safetensors_dir`);
* an official nnU-Net v1 ``.model`` (+ ``.model.pkl``) file, or a folder holding one, read without executing
  pickled code (:mod:`uniseg_hub.formats.nnunet_v1`) and converted with :func:`~uniseg_hub.model.checkpoint_filter_fn`;
* a name from the weights registry (``weights/*.json``, see :func:`list_pretrained`), fetched by :func:`download`;
* a Hugging Face Hub id (``org/name``), resolved through huggingface_hub's cache (``revision``, ``cache_dir``,
  ``local_files_only``; ``HF_HUB_OFFLINE=1`` works).

:func:`from_pretrained` then builds the model, loads strictly (mismatches raise :class:`~uniseg_hub.report.LoadError`)
and attaches ``model.load_report``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from torch import nn
from tqdm.auto import tqdm

from .config import UniSegConfig
from .encoder import UniSegEncoder
from .formats.nnunet_v1 import CheckpointError, load_nnunet_v1_checkpoint
from .formats.safetensors_dir import CONFIG_NAME, WEIGHTS_NAME, read_safetensors, save_folder
from .model import UniSeg, UniSegBackbone, checkpoint_filter_fn, is_official_state_dict
from .report import LoadReport, load_with_report

__all__ = [
    "from_pretrained",
    "load_state_and_config",
    "download",
    "convert_nnunet_v1",
    "list_pretrained",
    "registry_entry",
    "default_cache_dir",
    "uniseg",
    "uniseg_backbone",
    "uniseg_encoder",
]

logger = logging.getLogger(__name__)

REGISTRY_DIR = Path(__file__).resolve().parents[1] / "weights"
_REPO_ROOT = REGISTRY_DIR.parent
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_FORMATS = ("nnunet-v1", "safetensors-dir", "hf-hub")
DEFAULT_PRETRAINED = "uniseg-11task"


# ---------------------------------------------------------------------------------------------------------------
# Registry of named weights (weights/*.json)
# ---------------------------------------------------------------------------------------------------------------
def _registry_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("UNISEG_HUB_REGISTRY", "").split(os.pathsep) if p]
    return [*extra, REGISTRY_DIR]


def list_pretrained() -> list[str]:
    """Names of the registered weights (``weights/*.json`` and any folder in ``UNISEG_HUB_REGISTRY``)."""
    return sorted({p.stem for d in _registry_dirs() if d.is_dir() for p in d.glob("*.json")})


def registry_entry(name: str) -> dict[str, Any]:
    """The registry entry of ``name`` (a dict: name, format, files/path/repo_id, sha256, config preset, license, paper)."""
    for d in _registry_dirs():
        f = d / f"{name}.json"
        if f.is_file():
            entry = json.loads(f.read_text(encoding="utf-8"))
            entry["_registry_file"] = str(f)
            if entry.get("format") not in _FORMATS:
                raise ValueError(f"{f}: unknown weights format {entry.get('format')!r}; expected one of {list(_FORMATS)}")
            return entry
    raise KeyError(f"no registered weights named {name!r}; registered: {list_pretrained()}")


def default_cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where downloads go: ``override``, else ``$UNISEG_HUB_CACHE``, else ``~/.cache/uniseg_hub``."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("UNISEG_HUB_CACHE") or Path.home() / ".cache" / "uniseg_hub")


# ---------------------------------------------------------------------------------------------------------------
# Downloads: temp file -> sha256 check -> rename
# ---------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, sha256: str | None, progress: bool) -> Path:
    """Download ``url`` to ``dest`` through a temp file that is renamed only after the sha256 check passes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            url = _fetch_into(url, out, h, progress, dest.name)
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise ValueError(
                f"sha256 mismatch for {url}: expected {sha256.lower()}, got {h.hexdigest()}; the download was "
                f"discarded and the cache ({dest.parent}) left untouched"
            )
        if sha256 is None:
            logger.warning("no sha256 is known for %s: the file (sha256 %s) was not verified", url, h.hexdigest())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch_into(url: str, out, h, progress: bool, label: str, _hops: int = 0) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "uniseg_hub"}), timeout=60) as resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/html"):
            page = resp.read(1 << 20).decode("utf-8", "replace")
            confirm = _drive_confirm_url(page, url)
            if confirm and _hops == 0:  # Google Drive's "file too large to scan" page: follow its form once
                return _fetch_into(confirm, out, h, progress, label, _hops + 1)
            raise ValueError(
                f"{url} returned a web page instead of the file (content type {ctype!r}). Download it in a browser "
                "and load the local file, e.g. `uniseg-hub convert model_final_checkpoint.model OUT_DIR`"
            )
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
    return url


def _drive_confirm_url(page: str, url: str) -> str | None:
    form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page, re.S)
    if not form or "drive" not in urllib.parse.urlparse(url).netloc:
        return None
    fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form[2]))
    return form[1] + "?" + urllib.parse.urlencode(fields) if fields else None


def _unpack_official(downloaded: Path, target: Path, checkpoint: str) -> Path:
    """Place the official ``.model`` + ``.model.pkl`` at ``target/checkpoint``: the download is the ``.model``
    itself, or a zip archive holding both (only those two members are extracted)."""
    model_path = target / checkpoint
    with zipfile.ZipFile(downloaded) as zf:
        names = zf.namelist()
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):  # a torch.save zip: the .model itself
            return model_path if downloaded == model_path else Path(shutil.copyfile(downloaded, model_path))
        wanted = {checkpoint: None, checkpoint + ".pkl": None}
        for n in names:
            base = n.rsplit("/", 1)[-1]
            if base in wanted and wanted[base] is None:
                wanted[base] = n
        if wanted[checkpoint] is None:
            raise CheckpointError(f"{downloaded}: archive holds no {checkpoint} (found {names[:10]})")
        for base, member in wanted.items():
            if member is not None:
                with zf.open(member) as src, (target / base).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    return model_path


def download(
    name: str | Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    local_files_only: bool = False,
) -> Path:
    """Fetch registered weights and return a folder :func:`from_pretrained` can load.

    ``nnunet-v1`` entries are downloaded into ``<cache>/<name>/`` (sha256-verified when the entry knows it; a
    mismatch is refused and leaves the cache untouched) and converted once into ``<cache>/<name>/converted/``
    (``config.json`` + ``model.safetensors``). ``safetensors-dir`` entries point at a folder of this repository;
    ``hf-hub`` entries are resolved with huggingface_hub (its own cache).

    Args:
        name: a registry name (see :func:`list_pretrained`) or an entry dict of the same schema.
        cache_dir: overrides ``$UNISEG_HUB_CACHE`` / ``~/.cache/uniseg_hub``.
        force: download and convert again even when cached.
        local_files_only: never touch the network; fail when the files are not cached.
    """
    entry = dict(name) if isinstance(name, Mapping) else registry_entry(name)
    fmt, key = entry["format"], entry["name"]
    if fmt == "safetensors-dir":
        path = Path(entry["path"])
        path = path if path.is_absolute() else _REPO_ROOT / path
        if not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"weights {key!r}: expected a save_pretrained folder at {path} ({entry.get('note', '')})")
        return path
    if fmt == "hf-hub":
        for fname in (CONFIG_NAME, WEIGHTS_NAME):
            file = hf_hub_download(entry["repo_id"], fname, revision=entry.get("revision"), cache_dir=cache_dir,
                                   local_files_only=local_files_only, force_download=force)
        return Path(file).parent
    root = default_cache_dir(cache_dir) / key
    converted = root / "converted"
    if (converted / WEIGHTS_NAME).is_file() and not force:
        return converted
    checkpoint = entry.get("checkpoint", "model_final_checkpoint.model")
    for spec in entry["files"]:
        dest = root / spec["filename"]
        if dest.is_file() and not force:
            if spec.get("sha256") and _sha256(dest) != spec["sha256"].lower():
                raise ValueError(f"cached {dest} does not match its sha256 {spec['sha256']}; delete it or pass force=True")
            continue
        if local_files_only:
            raise FileNotFoundError(f"weights {key!r} are not in the cache {root} and local_files_only=True")
        urls = spec.get("urls") or [spec["url"]]
        errors = []
        for url in urls:
            try:
                logger.info("downloading %s -> %s", url, dest)
                _fetch(url, dest, spec.get("sha256"), progress)
                break
            except (OSError, ValueError) as e:
                if "sha256 mismatch" in str(e):
                    raise
                errors.append(f"{url}: {e}")
        else:
            raise OSError(f"could not download {spec['filename']} for {key!r}: " + "; ".join(errors))
        if zipfile.is_zipfile(dest):
            _unpack_official(dest, root, checkpoint)
    convert_nnunet_v1(root / checkpoint, converted, provenance={"registry_name": key, "source": entry.get("urls") or [
        f.get("url") for f in entry["files"]], "license": entry.get("license"), "paper": entry.get("paper")})
    return converted


# ---------------------------------------------------------------------------------------------------------------
# Resolving and loading
# ---------------------------------------------------------------------------------------------------------------
def _official_to_ours(state: Mapping[str, torch.Tensor], config: UniSegConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # only the key map is needed: no weights are allocated or initialised
        skeleton = UniSeg(config) if config.num_tasks > 0 else UniSegBackbone(config)
    return checkpoint_filter_fn(state, skeleton)


def _read_official(path: Path, config: UniSegConfig | None) -> tuple[dict[str, torch.Tensor], UniSegConfig, dict]:
    state, derived, meta = load_nnunet_v1_checkpoint(path)
    config = config or derived
    if config is None:
        raise CheckpointError(
            f"{path} has no companion plans file {path.name}.pkl, so the network cannot be derived; put the .pkl "
            "next to it or pass config=UniSegConfig(...)"
        )
    return _official_to_ours(state, config), config, meta


def load_state_and_config(
    id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    token: str | bool | None = None,
    map_location: str | torch.device = "cpu",
    config: UniSegConfig | None = None,
) -> tuple[dict[str, torch.Tensor], UniSegConfig, str]:
    """Resolve weights to ``(state dict in uniseg_hub key names, UniSegConfig, source string)`` without building a model.

    Args:
        id_or_path: a ``save_pretrained`` folder, a ``.safetensors`` file, an official ``.model`` file (or a
            folder holding ``model_final_checkpoint.model``), a registry name, or a Hub id ``org/name``.
        revision, cache_dir, local_files_only, force_download, token: as in huggingface_hub (Hub ids; for
            registry names ``cache_dir``/``local_files_only`` apply to :func:`download`).
        config: use this config instead of the one stored with the weights (needed for a ``.model`` without ``.pkl``).
    """
    raw = str(id_or_path)
    path = Path(raw).expanduser()
    if path.is_dir() and not (path / WEIGHTS_NAME).is_file():
        path = _run_folder_model(path)
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file():
            state, cfg, meta = read_safetensors(path, map_location=map_location)
            return state, config or cfg, str(path)
        models = sorted(path.glob("*.model"))
        if len(models) == 1 or (path / "model_final_checkpoint.model").is_file():
            target = path / "model_final_checkpoint.model" if (path / "model_final_checkpoint.model").is_file() else models[0]
            state, cfg, _ = _read_official(target, config)
            return _to(state, map_location), cfg, str(target)
        raise CheckpointError(
            f"{path} holds no weights: expected {WEIGHTS_NAME} + {CONFIG_NAME} (uniseg_hub) or one official .model file, "
            f"found {sorted(p.name for p in path.iterdir())[:12]}"
        )
    if path.is_file():
        if path.suffix == ".pt" and path.name.startswith("checkpoint_"):
            raise CheckpointError(
                f"{path} is a training checkpoint (for --resume), not a model: load the run's model folder "
                f"{path.parent / 'final'} (or {path.parent / 'best'}), or the run folder {path.parent} itself")
        if path.suffix == ".safetensors":
            state, cfg, _ = read_safetensors(path, map_location=map_location)
            return state, config or cfg, str(path)
        if path.name.endswith(".model.pkl"):
            raise CheckpointError(f"{path} is the trainer/plans pickle; pass the checkpoint {path.name[:-4]} instead")
        state, cfg, _ = _read_official(path, config)
        return _to(state, map_location), cfg, str(path)
    if raw in list_pretrained():
        folder = download(raw, cache_dir=cache_dir, local_files_only=local_files_only, force=force_download)
        state, cfg, _ = load_state_and_config(folder, map_location=map_location, config=config)
        return state, cfg, f"{raw} ({folder})"
    if _HUB_ID.match(raw) and not raw.endswith((".model", ".safetensors", ".pth", ".pt")):
        try:
            files = [hf_hub_download(raw, f, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                     force_download=force_download, token=token) for f in (CONFIG_NAME, WEIGHTS_NAME)]
        except LocalEntryNotFoundError as e:
            raise FileNotFoundError(
                f"{raw!r} is not in the Hugging Face cache and downloading is disabled (local_files_only / HF_HUB_OFFLINE): {e}"
            ) from None
        except HfHubHTTPError as e:
            raise FileNotFoundError(f"could not fetch {raw!r} from the Hugging Face Hub: {e}") from None
        state, cfg, _ = read_safetensors(Path(files[1]), map_location=map_location)
        return state, config or cfg, f"hf://{raw}" + (f"@{revision}" if revision else "")
    raise FileNotFoundError(
        f"cannot resolve weights {raw!r}: it is not an existing file or folder, not a registered name "
        f"({list_pretrained()}), and not a Hugging Face Hub id of the form 'org/name'"
    )


def _run_folder_model(path: Path) -> Path:
    """A fine-tuning run folder (``uniseg_hub.training.finetune``'s output) → its ``final/`` model folder."""
    final = path / "final"
    if (final / WEIGHTS_NAME).is_file():
        return final
    if (path / "checkpoint_latest.pt").is_file():
        best = path / "best"
        hint = f" its best model so far is in {best}," if (best / WEIGHTS_NAME).is_file() else ""
        raise CheckpointError(f"{path} holds a fine-tuning run that has not finished (no final/ model folder yet):{hint} "
                              "resume it with `uniseg-hub finetune ... --resume` to finish it")
    return path


def _to(state: dict[str, torch.Tensor], map_location: str | torch.device) -> dict[str, torch.Tensor]:
    return state if str(map_location) == "cpu" else {k: v.to(map_location) for k, v in state.items()}


def _model_class_for(config: UniSegConfig, model_cls: type[nn.Module] | None, source: str) -> type[nn.Module]:
    cls = model_cls or (UniSeg if config.num_tasks > 0 else UniSegBackbone)
    if cls is UniSegBackbone and config.num_tasks > 0:
        raise ValueError(
            f"{source} holds an upstream UniSeg ({config.num_tasks} prompt tasks), not a backbone: load it with "
            "UniSeg.from_pretrained, or transfer it with uniseg_hub.adapters.from_upstream(weights, num_classes=...)"
        )
    if cls is UniSeg and config.num_tasks == 0:
        raise ValueError(f"{source} holds a prompt-free UniSegBackbone; load it with UniSegBackbone.from_pretrained")
    return cls


def build_and_load(
    cls: type[nn.Module], config: UniSegConfig, state: Mapping[str, torch.Tensor], *, strict: bool = True, source: str = ""
) -> nn.Module:
    """Build ``cls(config)`` and load ``state`` with a report (``model.load_report``); eval mode.

    When ``state`` has exactly the model's keys and shapes, the model is built on the ``meta`` device and the
    tensors are assigned (no random initialisation of weights that are overwritten anyway).
    """
    with torch.device("meta"):
        skeleton = cls(config)
    own = skeleton.state_dict()
    exact = own.keys() == state.keys() and all(tuple(own[k].shape) == tuple(v.shape) for k, v in state.items())
    if exact:
        model, assign = skeleton, True
    else:
        model, assign = cls(config), False
    report = load_with_report(model, state, strict=strict, source=source, assign=assign)
    model.load_report = report
    report.log(logger)
    return model.eval()


def from_pretrained(
    id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    model_cls: type[nn.Module] | None = None,
    config: UniSegConfig | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    **overrides: Any,
) -> nn.Module:
    """Load pretrained UniSeg weights from anywhere (see :func:`load_state_and_config`) into a ready model.

    Returns a :class:`~uniseg_hub.model.UniSeg` when the weights hold a prompt, else a
    :class:`~uniseg_hub.model.UniSegBackbone` (or ``model_cls`` when given), in eval mode, with
    ``model.load_report`` (a :class:`~uniseg_hub.report.LoadReport`). ``overrides`` change config fields that
    do not change shapes (e.g. ``deep_supervision=True``).

    Raises:
        LoadError: with ``strict=True`` (default) any unexpected, missing or shape-mismatched key.
        CheckpointError: unsafe, truncated or foreign files.

    Example:
        >>> model = from_pretrained("uniseg-11task")                 # the authors' weights, converted once
        >>> model(torch.zeros(1, 1, 64, 192, 192), task_id="liver").shape
        torch.Size([1, 4, 64, 192, 192])
    """
    state, cfg, source = load_state_and_config(
        id_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
        force_download=force_download, token=token, map_location=map_location, config=config,
    )
    if overrides:
        cfg = cfg.replace(**overrides)
    cls = _model_class_for(cfg, model_cls, source)
    return build_and_load(cls, cfg, state, strict=strict, source=source)


def convert_nnunet_v1(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    plans_path: str | os.PathLike | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Convert an official ``.model`` (+ ``.model.pkl``) into a ``save_pretrained`` folder (strictly checked)."""
    checkpoint = Path(checkpoint)
    state, cfg, meta = load_nnunet_v1_checkpoint(checkpoint, plans_path)
    if cfg is None:
        raise CheckpointError(f"cannot convert {checkpoint}: its plans file {checkpoint}.pkl is missing")
    ours = _official_to_ours(state, cfg)
    model = build_and_load(_model_class_for(cfg, None, str(checkpoint)), cfg, ours, strict=True, source=str(checkpoint))
    prov = {"converted_from": checkpoint.name, "source_sha256": _sha256(checkpoint), "format": "nnU-Net v1 checkpoint",
            "epoch": meta.get("epoch"), "trainer": meta.get("name"), "converter": "uniseg_hub.hub.convert_nnunet_v1"}
    prov.update({k: v for k, v in (provenance or {}).items() if v is not None})
    prov.setdefault("license", {"license": "other", "license_name": "uniseg-noncommercial",
                                "license_link": "https://github.com/yeerwen/UniSeg/blob/main/LICENSE"})
    return save_folder(model.state_dict(), cfg, out_dir, provenance=prov)


# ---------------------------------------------------------------------------------------------------------------
# torch.hub entrypoints (re-exported by hubconf.py)
# ---------------------------------------------------------------------------------------------------------------
def _weights_source(pretrained: bool | str, checkpoint: str | os.PathLike | None) -> str | os.PathLike | None:
    if checkpoint is not None:
        return checkpoint
    if pretrained:
        return DEFAULT_PRETRAINED if pretrained is True else pretrained
    return None


def uniseg(pretrained: bool | str = False, checkpoint: str | os.PathLike | None = None, *,
           config: UniSegConfig | None = None, **overrides: Any) -> UniSeg:
    """The prompt-driven UniSeg (upstream 11-task network by default).

    Args:
        pretrained: ``True`` loads the authors' ``uniseg-11task`` weights; a string names registered weights or a Hub id.
        checkpoint: a local file/folder (official ``.model``, ``.safetensors``, ``save_pretrained`` folder); wins over ``pretrained``.
        config: network config when no weights are loaded (default :meth:`UniSegConfig.uniseg_11task`).
        **overrides: config fields to change (with weights: only those that keep shapes, e.g. ``deep_supervision``).
    """
    src = _weights_source(pretrained, checkpoint)
    if src is None:
        return UniSeg(config or UniSegConfig.uniseg_11task(), **overrides)
    return from_pretrained(src, model_cls=UniSeg, **overrides)


def uniseg_backbone(pretrained: bool | str = False, checkpoint: str | os.PathLike | None = None, *,
                    num_classes: int | None = None, config: UniSegConfig | None = None, **overrides: Any) -> UniSegBackbone:
    """The prompt-free UniSeg encoder-decoder (official downstream network).

    With upstream weights (a prompt in the checkpoint) the official transfer is applied
    (``uniseg_hub.adapters.from_upstream(..., strategy="official")``) and ``num_classes`` sizes the new heads
    (default: the BTCV preset's 14). With backbone weights they are loaded strictly.
    """
    src = _weights_source(pretrained, checkpoint)
    if src is None:
        cfg = config or UniSegConfig.btcv()
        return UniSegBackbone(cfg, **({"num_classes": num_classes} if num_classes else {}), **overrides)
    state, cfg, source = load_state_and_config(src)
    if cfg.num_tasks > 0:
        from . import adapters  # noqa: PLC0415 (optional module, imported on use)
        return adapters.from_upstream(src, num_classes=num_classes or UniSegConfig.btcv().num_classes, strategy="official")
    if num_classes is not None and num_classes != cfg.num_classes:
        raise ValueError(f"{source} has {cfg.num_classes} output classes, not {num_classes}; use model.reset_classifier({num_classes})")
    return build_and_load(UniSegBackbone, cfg.replace(**overrides) if overrides else cfg, state, source=source)


def uniseg_encoder(pretrained: bool | str = False, checkpoint: str | os.PathLike | None = None, *,
                   config: UniSegConfig | None = None, **overrides: Any) -> UniSegEncoder:
    """The UniSeg encoder alone: ``forward(x)`` returns every stage's features, bottleneck last (``feature_info``).

    With weights, the ``encoder.*`` tensors of any UniSeg/backbone checkpoint are loaded strictly; the rest is
    listed as dropped in ``encoder.load_report``.
    """
    src = _weights_source(pretrained, checkpoint)
    if src is None:
        return UniSegEncoder((config or UniSegConfig.uniseg_11task()).replace(**overrides))
    state, cfg, source = load_state_and_config(src)
    return encoder_from_state(state, cfg.replace(**overrides) if overrides else cfg, source)


def encoder_from_state(state: Mapping[str, torch.Tensor], config: UniSegConfig, source: str = "") -> UniSegEncoder:
    """A :class:`UniSegEncoder` holding the ``encoder.*`` tensors of ``state`` (strict), with ``load_report``."""
    if is_official_state_dict(state):
        state = _official_to_ours(state, config)
    sub = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    encoder = UniSegEncoder(config)
    report: LoadReport = load_with_report(encoder, sub, strict=True, source=source,
                                          dropped=[k for k in state if not k.startswith("encoder.")])
    encoder.load_report = report
    return encoder.eval()
