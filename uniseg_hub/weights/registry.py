"""The registry of named weights and their downloads: entries, cache, sha256-checked fetches (no models here).

The entries are package data (``uniseg_hub/registry/*.json``, with the demo weights they point at), so an
installed wheel carries them; ``UNISEG_HUB_REGISTRY=/path/a:/path/b`` adds folders searched first. Downloads go
to ``$UNISEG_HUB_CACHE`` or ``~/.cache/uniseg_hub/<name>/`` through a temp file renamed only after the sha256 check
(:func:`uniseg_hub.atomic.atomic_file`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import hf_hub_download
from tqdm.auto import tqdm

from ..atomic import atomic_file
from .nnunet_v1 import CheckpointError
from .safetensors_dir import CONFIG_NAME, WEIGHTS_NAME

__all__ = ["REGISTRY_DIR", "DEFAULT_PRETRAINED", "list_pretrained", "registry_entry", "default_cache_dir", "sha256_file", "fetch"]

logger = logging.getLogger(__name__)

#: the registry shipped inside the package (package data, so an installed wheel has it): ``*.json`` entries and the
#: demo weights folder they point at
REGISTRY_DIR = Path(__file__).resolve().parents[1] / "registry"
_FORMATS = ("nnunet-v1", "safetensors-dir", "hf-hub")
DEFAULT_PRETRAINED = "uniseg-11task"


def _registry_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("UNISEG_HUB_REGISTRY", "").split(os.pathsep) if p]
    return [*extra, REGISTRY_DIR]


def list_pretrained() -> list[str]:
    """Names of the registered weights (``uniseg_hub/registry/*.json`` and any folder in ``UNISEG_HUB_REGISTRY``)."""
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
def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, sha256: str | None, progress: bool) -> Path:
    """Download ``url`` to ``dest`` through a temp file that is renamed only after the sha256 check passes."""
    h = hashlib.sha256()
    with atomic_file(dest) as tmp:
        with tmp.open("wb") as out:
            url = _fetch_into(url, out, h, progress, dest.name)
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise ValueError(
                f"sha256 mismatch for {url}: expected {sha256.lower()}, got {h.hexdigest()}; the download was "
                f"discarded and the cache ({dest.parent}) left untouched"
            )
        if sha256 is None:
            logger.warning("no sha256 is known for %s: the file (sha256 %s) was not verified", url, h.hexdigest())
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
            if downloaded != model_path:
                with atomic_file(model_path) as tmp:
                    shutil.copyfile(downloaded, tmp)
            return model_path
        wanted = {checkpoint: None, checkpoint + ".pkl": None}
        for n in names:
            base = n.rsplit("/", 1)[-1]
            if base in wanted and wanted[base] is None:
                wanted[base] = n
        if wanted[checkpoint] is None:
            raise CheckpointError(f"{downloaded}: archive holds no {checkpoint} (found {names[:10]})")
        for base, member in wanted.items():
            if member is not None:
                with zf.open(member) as src, atomic_file(target / base) as tmp, tmp.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    return model_path


def fetch(
    name: str | Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    local_files_only: bool = False,
) -> Path:
    """Fetch registered weights' files (no conversion): a ``save_pretrained`` folder, or the official ``.model``.

    ``nnunet-v1`` entries are downloaded into ``<cache>/<name>/`` (sha256-verified when the entry knows it; a
    mismatch is refused and leaves the cache untouched) and the path of the official ``.model`` is returned (its
    ``.model.pkl`` beside it); :func:`uniseg_hub.weights.loader.download` converts it once. ``safetensors-dir``
    entries point at a folder (relative to their registry file); ``hf-hub`` entries are resolved with
    huggingface_hub (its own cache).

    Args:
        name: a registry name (see :func:`list_pretrained`) or an entry dict of the same schema.
        cache_dir: overrides ``$UNISEG_HUB_CACHE`` / ``~/.cache/uniseg_hub``.
        force: download again even when cached.
        local_files_only: never touch the network; fail when the files are not cached.
    """
    entry = dict(name) if isinstance(name, Mapping) else registry_entry(name)
    fmt, key = entry["format"], entry["name"]
    if fmt == "safetensors-dir":
        path = Path(entry["path"])  # relative paths are relative to the entry's own registry folder
        if not path.is_absolute():
            path = Path(entry.get("_registry_file", REGISTRY_DIR / "_")).parent / path
        if not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"weights {key!r}: expected a save_pretrained folder at {path} ({entry.get('note', '')})")
        return path
    if fmt == "hf-hub":
        for fname in (CONFIG_NAME, WEIGHTS_NAME):
            file = hf_hub_download(entry["repo_id"], fname, revision=entry.get("revision"), cache_dir=cache_dir,
                                   local_files_only=local_files_only, force_download=force)
        return Path(file).parent
    root = default_cache_dir(cache_dir) / key
    checkpoint = entry.get("checkpoint", "model_final_checkpoint.model")
    for spec in entry["files"]:
        dest = root / spec["filename"]
        if dest.is_file() and not force:
            if spec.get("sha256") and sha256_file(dest) != spec["sha256"].lower():
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
    return root / checkpoint


