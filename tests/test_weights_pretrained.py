"""Our format and every way into it: convert → from_pretrained parity, save/load round trip, the Hugging Face
cache (real huggingface_hub code, offline), registry downloads from a local HTTP server with sha256 checks."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch

import uniseg_hub
from uniseg_hub import UniSeg, UniSegBackbone, download, from_pretrained, load_state_and_config
from uniseg_hub.cli import main as cli_main
from uniseg_hub.weights import CheckpointError
from uniseg_hub.hub import REGISTRY_DIR, list_pretrained, registry_entry

from .conftest import REF, TINY_MODEL, max_abs

CASES = ["c1_b1_t0", "c1_b1_t7", "c2_b1_t10", "c4_b1_t9", "c1_b2_mixed_t2_t5"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conv") / "tiny"
    assert cli_main(["convert", str(TINY_MODEL), str(out)]) == 0
    return out


def _check_outputs(model, upstream_io, cases=CASES):
    with torch.no_grad():
        for case in cases:
            x = torch.from_numpy(upstream_io[f"{case}/input"])
            tasks = upstream_io[f"{case}/task_id"].tolist()
            out = model(x, tasks)
            if case.startswith("c1_b2_mixed"):  # official truths are per sample (own task)
                for j in range(2):
                    assert max_abs(out[j : j + 1], upstream_io[f"{case}/per_sample{j}_out"]) <= 1e-4, (case, j)
            else:
                assert max_abs(out, upstream_io[f"{case}/out"]) <= 1e-4, case


def test_convert_then_from_pretrained_reproduces_official_outputs(converted, upstream_io, tiny_config):
    assert sorted(p.name for p in converted.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    saved = json.loads((converted / "config.json").read_text())
    assert saved["provenance"]["converted_from"] == "tiny_upstream.model" and saved["provenance"]["epoch"] == 2
    assert {**saved, "provenance": {}} == tiny_config.to_dict()
    model = from_pretrained(converted)
    assert isinstance(model, UniSeg) and not model.training
    rep = model.load_report
    assert len(rep.matched) == 115 and rep.ok and not rep.random_init and not rep.adapted
    _check_outputs(model, upstream_io)


def test_official_file_loads_directly(upstream_io):
    model = UniSeg.from_pretrained(TINY_MODEL)  # .model + .pkl, no conversion step
    _check_outputs(model, upstream_io, ["c2_b1_t10"])


def test_save_load_round_trip_is_bit_identical(converted, tmp_path):
    model = from_pretrained(converted)
    model.save_pretrained(tmp_path / "again")
    again = UniSeg.from_pretrained(tmp_path / "again")
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert again.config == model.config
    # trainability is kept by the meta-device fast path, and in-place updates never reach the (mapped) file
    assert all(p.requires_grad and p.device.type == "cpu" for p in again.parameters())
    before = (tmp_path / "again" / "model.safetensors").read_bytes()
    with torch.no_grad():
        for p in again.parameters():
            p.add_(1.0)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == before


def test_lone_safetensors_file_is_self_describing(converted, tmp_path):
    single = tmp_path / "weights.safetensors"
    shutil.copyfile(converted / "model.safetensors", single)  # no config.json next to it
    model = from_pretrained(single)
    ref = from_pretrained(converted)
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), ref.state_dict().values()))


def test_model_card_states_contract_and_provenance(converted):
    card = (converted / "README.md").read_text()
    for needed in ("library_name: uniseg_hub", "license: other", "license_link: https://github.com/yeerwen/UniSeg/blob/main/LICENSE",
                   "| 9 | brain_tumor | 4 | T1 + T1ce + T2 + FLAIR |", "CT: clip to [-325.0, 325.0] and scale linearly to [0, 1]",
                   "z-score per image", "target spacing (z, y, x): [3.0, 1.5, 1.5] mm", "converted_from: tiny_upstream.model",
                   f"source_sha256: {hashlib.sha256(TINY_MODEL.read_bytes()).hexdigest()}", "arxiv.org/abs/2304.03493"):
        assert needed in card, needed


def test_wrong_class_and_corrupt_safetensors(converted, tmp_path):
    with pytest.raises(ValueError, match="holds an upstream UniSeg .*adapters.from_upstream"):
        UniSegBackbone.from_pretrained(converted)
    bad = tmp_path / "bad"
    shutil.copytree(converted, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        from_pretrained(bad)
    with pytest.raises(FileNotFoundError, match="not an existing file or folder, not a registered name"):
        from_pretrained(str(tmp_path / "nope.safetensors"))


def test_backbone_round_trip(tmp_path):
    model = UniSegBackbone(uniseg_hub.UniSegConfig.vs(base_num_features=2, max_num_features=16, patch_size=[32, 64, 64]))
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert isinstance(loaded, UniSegBackbone) and loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="prompt-free UniSegBackbone"):
        UniSeg.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# Hugging Face hub ids through huggingface_hub's real cache code
# --------------------------------------------------------------------------------------------------------------
def _hf_cache(root: Path, repo: str, revisions: dict[str, Path], main: str) -> Path:
    """Lay out ``models--org--name/{blobs,snapshots/<rev>,refs/main}`` like huggingface_hub writes it."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    for rev, folder in revisions.items():
        snap = repo_dir / "snapshots" / rev
        snap.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            data = (folder / name).read_bytes()
            blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snap / name).symlink_to(os.path.relpath(blob, snap))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(main)
    return root


def test_hub_id_from_local_cache(converted, tmp_path):
    other = tmp_path / "other"
    model = from_pretrained(converted)
    with torch.no_grad():
        model.decoder.heads[0].weight.mul_(2)
    model.save_pretrained(other)
    rev1, rev2 = "1" * 40, "2" * 40
    cache = _hf_cache(tmp_path / "hf", "someorg/uniseg-tiny", {rev1: converted, rev2: other}, main=rev1)
    main = from_pretrained("someorg/uniseg-tiny", cache_dir=cache, local_files_only=True)
    pinned = from_pretrained("someorg/uniseg-tiny", cache_dir=cache, local_files_only=True, revision=rev2)
    ref = from_pretrained(converted)
    assert torch.equal(main.decoder.heads[0].weight, ref.decoder.heads[0].weight)
    assert torch.equal(pinned.decoder.heads[0].weight, 2 * ref.decoder.heads[0].weight)
    assert main.load_report.source == "hf://someorg/uniseg-tiny"
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        from_pretrained("someorg/missing", cache_dir=cache, local_files_only=True)
    # HF_HUB_OFFLINE=1 in a fresh process (huggingface_hub reads it at import), through the CLI
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "uniseg_hub.cli", "info", "someorg/uniseg-tiny", "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["source"] == "hf://someorg/uniseg-tiny" and info["num_tensors"] == 115 and info["config"]["base_num_features"] == 3


# --------------------------------------------------------------------------------------------------------------
# Registry downloads from a local HTTP server
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _entry(base, files, name="tiny-test"):
    return {"name": name, "format": "nnunet-v1", "checkpoint": "model_final_checkpoint.model",
            "files": [{"filename": f, "url": f"{base}/{f}", "sha256": s} for f, s in files], "license": "other"}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_download_verifies_converts_and_caches(http_root, tmp_path, upstream_io):
    root, base = http_root
    shutil.copyfile(TINY_MODEL, root / "model_final_checkpoint.model")
    shutil.copyfile(str(TINY_MODEL) + ".pkl", root / "model_final_checkpoint.model.pkl")
    entry = _entry(base, [("model_final_checkpoint.model", _sha(TINY_MODEL)),
                          ("model_final_checkpoint.model.pkl", _sha(Path(str(TINY_MODEL) + ".pkl")))])
    cache = tmp_path / "cache"
    folder = download(entry, cache_dir=cache, progress=False)
    assert folder == cache / "tiny-test" / "converted"
    _check_outputs(from_pretrained(folder), upstream_io, ["c1_b1_t0"])
    # cached: works with the server's files gone and local_files_only
    for f in root.iterdir():
        f.unlink()
    assert download(entry, cache_dir=cache, local_files_only=True) == folder
    # a registered name (registry folder from UNISEG_HUB_REGISTRY) resolves through download()
    reg = tmp_path / "registry"
    reg.mkdir()
    (reg / "tiny-test.json").write_text(json.dumps(entry))
    os.environ["UNISEG_HUB_REGISTRY"] = str(reg)
    try:
        assert "tiny-test" in list_pretrained()
        model = from_pretrained("tiny-test", cache_dir=cache)
        assert model.load_report.source.startswith("tiny-test (")
    finally:
        del os.environ["UNISEG_HUB_REGISTRY"]


def test_sha256_mismatch_is_refused_and_cache_untouched(http_root, tmp_path):
    root, base = http_root
    shutil.copyfile(TINY_MODEL, root / "model_final_checkpoint.model")
    entry = _entry(base, [("model_final_checkpoint.model", "0" * 64)])
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=f"sha256 mismatch .*expected {'0' * 64}, got {_sha(TINY_MODEL)}"):
        download(entry, cache_dir=cache, progress=False)
    assert not any(p.is_file() for p in cache.rglob("*")), list(cache.rglob("*"))


def test_download_of_zip_archive_and_html_page(http_root, tmp_path, upstream_io):
    root, base = http_root
    with zipfile.ZipFile(root / "release.zip", "w") as zf:
        zf.write(TINY_MODEL, "UniSeg_11_Tasks/fold_0/model_final_checkpoint.model")
        zf.write(str(TINY_MODEL) + ".pkl", "UniSeg_11_Tasks/fold_0/model_final_checkpoint.model.pkl")
        zf.writestr("UniSeg_11_Tasks/fold_0/evil.py", "raise SystemExit")
    folder = download(_entry(base, [("release.zip", None)]), cache_dir=tmp_path / "c1", progress=False)
    assert not (tmp_path / "c1" / "tiny-test" / "evil.py").exists()
    _check_outputs(from_pretrained(folder), upstream_io, ["c1_b1_t7"])
    (root / "page.html").write_text("<html><body>Sign in to continue</body></html>")
    with pytest.raises(OSError, match="returned a web page instead of the file"):
        download(_entry(base, [("page.html", None)]), cache_dir=tmp_path / "c2", progress=False)


# --------------------------------------------------------------------------------------------------------------
# The committed registry
# --------------------------------------------------------------------------------------------------------------
def test_registry_entries_are_complete():
    names = {p.stem for p in REGISTRY_DIR.glob("*.json")}
    assert {"uniseg-11task", "uniseg-demo"} <= names
    for name in names:
        e = registry_entry(name)
        assert e["name"] == name and {"format", "license", "paper", "sha256" if e["format"] != "nnunet-v1" else "files"} <= set(e)
    official = registry_entry("uniseg-11task")
    assert official["format"] == "nnunet-v1" and official["config_preset"] == "uniseg_11task"
    assert all(f["sha256"] is None for f in official["files"]) and official["sha256_note"].startswith("No sha256 of the authors")
    assert any("drive.google.com" in u for f in official["files"] for u in f["urls"])
    assert official["num_parameters"] == json.loads((REF / "upstream_full_keys.json").read_text())["num_parameters"]
    demo = registry_entry("uniseg-demo")
    assert demo["format"] == "safetensors-dir" and demo["path"] == "uniseg-demo"


@pytest.mark.skipif(not (REGISTRY_DIR / "uniseg-demo" / "model.safetensors").is_file(), reason="demo weights not trained yet")
def test_demo_weights_load_by_name():
    model = from_pretrained("uniseg-demo")
    assert model.load_report.ok and not model.load_report.random_init
    state, config, source = load_state_and_config("uniseg-demo")
    assert config == model.config and "uniseg_hub/registry/uniseg-demo" in source.replace(os.sep, "/")
