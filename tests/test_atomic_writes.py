"""Atomic writers (:mod:`uniseg_hub.atomic`): ``kill -9`` at random moments never leaves a half-written destination.

The kill tests run each writer in a loop in a real process and ``SIGKILL`` it after a seeded random delay, then load
the destination with the library's normal readers (``from_pretrained``, ``load_checkpoint``): it must be exactly
the old or the new version (tensors compared), or, for a new destination only, absent. The writer processes are
forked from one "zygote" (``python -m tests.test_atomic_writes ZYGOTE_DIR``, started once per module) that has
imported uniseg_hub and built the two versions A and B, so a writer starts in milliseconds. Each writer appends
``start I VERSION`` / ``done I VERSION`` to a marker file around every write; a kill that lands after a ``start``
without its ``done`` hit the write itself, and a good share of the kills must land there.
``UNISEG_HUB_KILLS=200 pytest tests/test_atomic_writes.py`` runs more kills per writer (default 20).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

import uniseg_hub
from uniseg_hub.atomic import atomic_file, atomic_folder, atomic_write_text, recover_folder, recovered_path
from uniseg_hub.training.checkpoint import load_checkpoint, save_checkpoint

from .conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("UNISEG_HUB_KILLS", "20"))  # kills per writer


def _hidden(folder: Path, name: str) -> list[str]:
    """The temporary / backup siblings of ``folder / name``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.")) if folder.is_dir() else []


# ---------------------------------------------------------------------------------------------------------------
# Unit tests of uniseg_hub.atomic
# ---------------------------------------------------------------------------------------------------------------
def _write_tree(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def _read_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_folder_error_leaves_old_folder_and_no_temp(tmp_path):
    dest = tmp_path / "model"
    _write_tree(dest, {"a.txt": "old a", "sub/b.txt": "old b"})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_folder(dest) as tmp:
            _write_tree(tmp, {"a.txt": "new a"})
            assert tmp.parent == tmp_path and tmp.name.startswith(".model.tmp-")
            raise RuntimeError("boom")
    assert _read_tree(dest) == {"a.txt": "old a", "sub/b.txt": "old b"}
    assert _hidden(tmp_path, "model") == []


def test_atomic_folder_replaces_the_folder_as_a_whole(tmp_path):
    dest = tmp_path / "model"
    _write_tree(dest, {"a.txt": "old a", "stale.txt": "old"})
    with atomic_folder(dest) as tmp:
        _write_tree(tmp, {"a.txt": "new a", "c.txt": "new c"})
        assert _read_tree(dest) == {"a.txt": "old a", "stale.txt": "old"}  # nothing visible before the swap
    assert _read_tree(dest) == {"a.txt": "new a", "c.txt": "new c"}
    assert _hidden(tmp_path, "model") == []
    # carry_over keeps the entries the new version does not write (a .git, the user's files), as hard links
    _write_tree(dest, {".git/HEAD": "ref", "notes.txt": "mine"})
    with atomic_folder(dest, carry_over=True) as tmp:
        _write_tree(tmp, {"a.txt": "newer a"})
    assert _read_tree(dest) == {"a.txt": "newer a", "c.txt": "new c", ".git/HEAD": "ref", "notes.txt": "mine"}
    # a new destination, its parents created
    with atomic_folder(tmp_path / "x" / "y") as tmp:
        _write_tree(tmp, {"f": "1"})
    assert _read_tree(tmp_path / "x" / "y") == {"f": "1"} and _hidden(tmp_path / "x", "y") == []


def test_atomic_folder_into_the_working_folder_follows_it(tmp_path, monkeypatch):
    dest = tmp_path / "model"
    _write_tree(dest, {"sub/a.txt": "old"})
    monkeypatch.chdir(dest / "sub")
    with atomic_folder("..", carry_over=True) as tmp:
        _write_tree(tmp, {"b.txt": "new"})
    assert Path.cwd() == dest / "sub" and Path("a.txt").read_text() == "old" and Path("../b.txt").read_text() == "new"


def test_recovery_of_an_interrupted_swap(tmp_path, tiny_config):
    """A kill between the two renames (destination missing, backup there) reads as the old version and the next
    write restores it first; a kill after them (both there) reads the new one and the next write drops the backup."""
    dest, backup = tmp_path / "model", tmp_path / ".model.old"
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(uniseg_hub.UniSeg(tiny_config))
    old, new = models
    old.save_pretrained(dest)
    dest.rename(backup)  # killed between the renames
    assert recovered_path(dest) == backup and recovered_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert_same(uniseg_hub.from_pretrained(dest), old)
    assert recover_folder(dest) == dest and recovered_path(dest) == dest and _hidden(tmp_path, "model") == []
    assert_same(uniseg_hub.from_pretrained(dest), old)
    dest.rename(backup)
    new.save_pretrained(dest)  # the writer first puts the old version back, then swaps as usual
    assert _hidden(tmp_path, "model") == []
    assert_same(uniseg_hub.from_pretrained(dest), new)
    shutil.copytree(dest, backup)  # killed after the renames, before the backup was deleted
    (backup / "model.safetensors").write_bytes(b"half deleted")
    assert_same(uniseg_hub.from_pretrained(dest), new)
    old.save_pretrained(dest)
    assert _hidden(tmp_path, "model") == []
    assert_same(uniseg_hub.from_pretrained(dest), old)


def test_stale_temporaries_of_dead_writers_are_swept(tmp_path):
    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    live = os.getppid()
    (tmp_path / f".ckpt.pt.tmp-{pid}-0123abcd.pt").write_bytes(b"half")
    (tmp_path / f".ckpt.pt.tmp-{live}-0123abcd.pt").write_bytes(b"busy")  # another writer, still running
    (tmp_path / f".model.tmp-{pid}-89abcdef").mkdir()
    (tmp_path / ".ckpt.pt.tmp-x").write_bytes(b"not ours")  # not our pattern: left alone
    atomic_write_text(tmp_path / "ckpt.pt", "new")
    assert _hidden(tmp_path, "ckpt.pt") == [f".ckpt.pt.tmp-{live}-0123abcd.pt", ".ckpt.pt.tmp-x"]
    with atomic_folder(tmp_path / "model") as tmp:
        (tmp / "f").write_text("1")
    assert _hidden(tmp_path, "model") == []


def test_atomic_file_error_leaves_old_file(tmp_path):
    dest = tmp_path / "log.json"
    atomic_write_text(dest, "old")
    with pytest.raises(ValueError):
        with atomic_file(dest) as tmp:
            assert tmp.suffix == ".json" and tmp.is_file()
            tmp.write_text("half")
            raise ValueError
    assert dest.read_text() == "old" and _hidden(tmp_path, "log.json") == []
    with atomic_file(dest) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new" and _hidden(tmp_path, "log.json") == []
    with pytest.raises(NotADirectoryError):
        with atomic_folder(dest):
            pass


def test_save_pretrained_keeps_foreign_files_and_push_to_hub_uploads_the_folder(tmp_path, tiny_config, monkeypatch):
    from huggingface_hub import hub_mixin

    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return argparse.Namespace(repo_id=f"me/{repo_id}")

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.append((repo_id, sorted(os.listdir(folder_path)), uniseg_hub.from_pretrained(folder_path)))
            return "https://hub/commit"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    model = uniseg_hub.UniSeg(tiny_config)
    dest = tmp_path / "tiny"
    _write_tree(dest, {".gitattributes": "*.safetensors filter=lfs", "config.json": "{broken"})
    assert model.save_pretrained(dest, push_to_hub=True) == "https://hub/commit"
    assert sorted(os.listdir(dest)) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    assert_same(uniseg_hub.from_pretrained(dest), model)
    assert model.push_to_hub("other") == "https://hub/commit"
    files = ["README.md", "config.json", "model.safetensors"]
    assert [(u[0], u[1]) for u in uploads] == [("me/tiny", files), ("me/other", files)]
    for _, _, loaded in uploads:
        assert_same(loaded, model)


def assert_same(a, b) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _state(x) -> dict[str, torch.Tensor]:
    return x.state_dict() if isinstance(x, torch.nn.Module) else x


# ---------------------------------------------------------------------------------------------------------------
# Kill -9 tests
# ---------------------------------------------------------------------------------------------------------------
class Zygote:
    """A process that has imported uniseg_hub and forks writer processes on request (``python -m`` this module)."""

    def __init__(self, work: Path):
        self.work = work
        self.log = open(work / "zygote.err", "w+")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.test_atomic_writes", str(work)], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.info = self._reply()  # seconds one write of each kind takes

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"the zygote died:\n{self.log.read()[-4000:]}")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.proc.kill()  # its writers are all killed and reaped already
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def _marks(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _kill_once(zygote: Zygote, rng: random.Random, marks: Path, **cmd) -> list[list[str]]:
    """Fork a writer looping over ``cmd["kind"]``, let it start, SIGKILL it after a random delay; its marker lines."""
    pid = zygote.ask(op="fork", marks=str(marks), **cmd)["pid"]
    try:
        deadline = time.monotonic() + 60
        while not _marks(marks) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 3 * zygote.info[cmd["kind"]]))
    finally:
        os.kill(pid, signal.SIGKILL)
        status = zygote.ask(op="reap", pid=pid)
    if status["signal"] != signal.SIGKILL:
        zygote.log.seek(0)
        pytest.fail(f"the {cmd['kind']} writer ended by itself ({status}), not by the kill:\n{zygote.log.read()[-4000:]}")
    return _marks(marks)


def _refs(zygote: Zygote, prefix: str) -> dict[str, dict[str, torch.Tensor]]:
    return {v: uniseg_hub.from_pretrained(zygote.work / f"{prefix}_{v}").state_dict() for v in "AB"}


def _which(state, refs: dict) -> str:
    state = _state(state)
    found = [v for v, ref in refs.items() if ref.keys() == state.keys() and all(torch.equal(state[k], ref[k]) for k in ref)]
    assert len(found) == 1, "the destination holds neither version A nor version B"
    return found[0]


def _new_folder_kills(zygote, tmp_path, kind: str, prefix: str, rewrite, seed: int) -> dict[str, int]:
    """Writers that create folder after folder (``n0``, ``n1``, ...; version A or B by parity): after each kill every
    finished folder loads as its version and the one being written is absent or complete. The next writer starts
    with that folder again, so what a kill left is cleaned up by the next write (the temporaries stay bounded)."""
    refs, rng, counts = _refs(zygote, prefix), random.Random(seed), {"mid_write": 0, "absent": 0, "complete": 0}
    root, start = tmp_path / "out", 0
    for k in range(KILLS):
        marks = _kill_once(zygote, rng, tmp_path / f"marks{k}", kind=kind, root=str(root), start=start, version="")
        finished = [m for m in marks if m[0] == "done"]
        if finished:
            assert _which(uniseg_hub.from_pretrained(root / f"n{finished[-1][1]}"), refs) == finished[-1][2]
        last = marks[-1]
        start = int(last[1]) + (last[0] == "done")
        if last[0] == "start":  # the kill hit the write of folder n<i>
            counts["mid_write"] += 1
            dest = root / f"n{last[1]}"
            if recovered_path(dest).exists():
                counts["complete"] += 1
                assert _which(uniseg_hub.from_pretrained(dest), refs) == last[2]
            else:
                counts["absent"] += 1
        # a temporary folder (+ a backup, were n<i> complete already and the kill between the swap's renames)
        assert len([p for p in root.iterdir() if p.name.startswith(".")] if root.is_dir() else []) <= 2
    dest = root / f"n{start}"
    rewrite("AB"[start % 2], dest)
    assert _which(uniseg_hub.from_pretrained(dest), refs) == "AB"[start % 2]
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    return counts


def _same_destination_kills(zygote, tmp_path, kind: str, dest: Path, load, refs, rewrite, seed: int) -> dict[str, int]:
    """Writers that replace one destination (version A, B, A, ...): after each kill it loads as the version it held
    before the interrupted write or the one being written; temporaries stay bounded and go with the next write."""
    rng, counts = random.Random(seed), {"mid_write": 0, "old": 0, "new": 0, "between_renames": 0}
    rewrite("A", dest)
    current = "A"
    for k in range(KILLS):
        marks = _kill_once(zygote, rng, tmp_path / f"marks{k}", kind=kind, root=str(dest.parent), start=0, version=current)
        done = [m[2] for m in marks if m[0] == "done"]
        before = done[-1] if done else current
        counts["between_renames"] += not dest.exists()
        found = _which(load(dest), refs)
        if marks[-1][0] == "start":
            counts["mid_write"] += 1
            assert found in (before, marks[-1][2])
            counts["old" if found == before else "new"] += 1
        else:
            assert found == before
        assert len(_hidden(dest.parent, dest.name)) <= 2, _hidden(dest.parent, dest.name)
        current = found
    rewrite(current, dest)
    assert _which(load(dest), refs) == current and _hidden(dest.parent, dest.name) == []
    return counts


def _report(kind: str, counts: dict[str, int]) -> None:
    print(f"{kind}: {KILLS} kills, {counts}")
    assert counts["mid_write"] >= KILLS // 2, f"too few kills landed mid-write to prove anything: {counts}"


def test_kill_save_pretrained_into_new_folders(zygote, tmp_path):
    models = {v: uniseg_hub.from_pretrained(zygote.work / f"ref_{v}") for v in "AB"}
    counts = _new_folder_kills(zygote, tmp_path, "save_new", "ref", lambda v, dest: models[v].save_pretrained(dest), seed=1)
    _report("save_pretrained (new folder)", counts)


def test_kill_save_pretrained_over_existing_folder(zygote, tmp_path):
    models = {v: uniseg_hub.from_pretrained(zygote.work / f"ref_{v}") for v in "AB"}
    counts = _same_destination_kills(zygote, tmp_path, "save_over", tmp_path / "model", uniseg_hub.from_pretrained,
                                     _refs(zygote, "ref"), lambda v, dest: models[v].save_pretrained(dest), seed=2)
    _report("save_pretrained (existing folder)", counts)


def test_kill_convert_into_new_folders(zygote, tmp_path):
    from uniseg_hub.cli.convert import run

    def rewrite(v, dest):
        run(argparse.Namespace(checkpoint=zygote.work / f"official_{v}.model", out_dir=dest, plans=None))

    counts = _new_folder_kills(zygote, tmp_path, "convert_new", "conv", rewrite, seed=3)
    _report("uniseg-hub convert (new folder)", counts)


def test_kill_save_checkpoint(zygote, tmp_path):
    refs = {v: load_checkpoint(zygote.work / f"ckpt_{v}.pt")["trainer"]["model"] for v in "AB"}
    counts = _same_destination_kills(
        zygote, tmp_path, "checkpoint", tmp_path / "checkpoint_latest.pt", lambda p: load_checkpoint(p)["trainer"]["model"],
        refs, lambda v, dest: save_checkpoint(dest, load_checkpoint(zygote.work / f"ckpt_{v}.pt")), seed=4)
    _report("save_checkpoint", counts)


# ---------------------------------------------------------------------------------------------------------------
# The zygote and its writers (run as ``python -m tests.test_atomic_writes WORK_DIR``)
# ---------------------------------------------------------------------------------------------------------------
def _zygote_main(work: Path) -> None:
    from uniseg_hub.cli.convert import run as convert
    from uniseg_hub.weights import load_nnunet_v1_checkpoint
    from uniseg_hub.weights.nnunet_v1 import SAFE_NUMPY_GLOBALS

    torch.set_num_threads(1)
    _, config, _ = load_nnunet_v1_checkpoint(TINY_MODEL)
    models = {}
    for seed, v in enumerate("AB"):
        torch.manual_seed(seed)
        models[v] = uniseg_hub.UniSeg(config).eval()
    with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
        official = torch.load(TINY_MODEL, weights_only=True)
    for v, delta in (("A", 0.0), ("B", 0.5)):  # two official checkpoints of different weights
        official["state_dict"] = {k: t + delta if t.is_floating_point() else t for k, t in official["state_dict"].items()}
        torch.save(official, work / f"official_{v}.model")
        shutil.copyfile(f"{TINY_MODEL}.pkl", work / f"official_{v}.model.pkl")

    def write(kind: str, dest: Path, v: str) -> None:
        if kind.startswith("save"):
            models[v].save_pretrained(dest)
        elif kind == "convert_new":
            convert(argparse.Namespace(checkpoint=work / f"official_{v}.model", out_dir=dest, plans=None))
        else:
            save_checkpoint(dest, {"trainer": {"model": models[v].state_dict()}, "epoch": "AB".index(v) + 1,
                                   "rng": {"seed": 0}, "history": [{"epoch": 1, "version": v}]})

    timing = {}
    for kind, prefix in (("save_new", "ref"), ("convert_new", "conv"), ("checkpoint", "ckpt")):
        for v in "AB":
            t0 = time.perf_counter()
            write(kind, work / (f"{prefix}_{v}" + (".pt" if kind == "checkpoint" else "")), v)
            timing[kind] = time.perf_counter() - t0
    timing["save_over"] = timing["save_new"]
    print(json.dumps(timing), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "reap":
            _, status = os.waitpid(cmd["pid"], 0)
            print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                              "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:  # the writer: loops until killed
            try:
                _writer_loop(cmd, write)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)
        print(json.dumps({"pid": pid}), flush=True)


def _writer_loop(cmd: dict, write) -> None:
    marks = os.open(cmd["marks"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    root, v = Path(cmd["root"]), cmd["version"]
    fixed = {"checkpoint": "checkpoint_latest.pt", "save_over": "model"}.get(cmd["kind"])  # one destination, rewritten
    for i in itertools.count(cmd["start"]):
        v = ("B" if v == "A" else "A") if fixed else "AB"[i % 2]
        dest = root / (fixed or f"n{i}")
        os.write(marks, f"start {i} {v}\n".encode())
        write(cmd["kind"], dest, v)
        os.write(marks, f"done {i} {v}\n".encode())


if __name__ == "__main__":
    _zygote_main(Path(sys.argv[1]))
