"""The wheel works like the repository: built with ``pip wheel``, installed into a fresh virtualenv, used from
another folder, it lists the registry and runs README's quick start (registry and demo weights are package data).

The fresh virtualenv reuses the test environment's third-party packages through a ``.pth`` path line (a plain
path: the editable install's own ``.pth`` hook in that folder is not run, so ``uniseg_hub`` comes from the wheel).
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _quick_start() -> str:
    section = re.split(r"^## ", README, flags=re.M)
    text = next(p for p in section if p.startswith("Quick start"))
    return re.search(r"<!-- runnable -->\n```python\n(.*?)^```$", text, re.M | re.S)[1]


def test_wheel_installed_elsewhere_lists_the_registry_and_runs_the_quick_start(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    wheel = next(dist.glob("uniseg_hub-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"uniseg_hub/registry/uniseg-demo.json", "uniseg_hub/registry/uniseg-11task.json",
            "uniseg_hub/registry/uniseg-demo/model.safetensors", "uniseg_hub/registry/uniseg-demo/config.json",
            "uniseg_hub/data/official_splits.json"} <= set(names), names

    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    py = env / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "test_env_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = ("import uniseg_hub, pathlib; print(pathlib.Path(uniseg_hub.__file__).resolve().parent); "
             "print(uniseg_hub.list_pretrained())")
    proc = subprocess.run([str(py), "-c", check], cwd=elsewhere, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    where, registered = proc.stdout.splitlines()
    assert Path(where) == (site / "uniseg_hub").resolve(), f"uniseg_hub imported from {where}, not the wheel"
    assert "uniseg-demo" in registered and "uniseg-11task" in registered

    proc = subprocess.run([str(py), "-c", _quick_start()], cwd=elsewhere, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(189, 233, 197)" in proc.stdout and "(64, 4, 6, 4)" in proc.stdout, proc.stdout
    assert (elsewhere / "t1_tissue.nii.gz").is_file()
