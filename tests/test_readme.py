"""README.md stays true: its runnable code blocks execute, its commands parse, its names and links exist.

A fenced ```python block directly preceded by ``<!-- runnable -->`` is executed by the default test run; one
preceded by ``<!-- runnable: slow -->`` only with the slow tests (``make test-all``).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
_BLOCK = re.compile(r"^<!-- runnable(?P<slow>: slow)? -->\n```python\n(?P<code>.*?)^```$", re.M | re.S)


def _runnable(slow: bool) -> list[tuple[int, str]]:
    return [(README[: m.start()].count("\n") + 1, m["code"]) for m in _BLOCK.finditer(README) if bool(m["slow"]) == slow]


def _section(title: str) -> str:
    parts = re.split(r"^## ", README, flags=re.M)
    hits = [p for p in parts if p.startswith(title)]
    assert hits, f"README has no section '## {title}'"
    return hits[0]


def _exec(code: str, line: int, tmp_path: Path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)  # blocks may write files
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


def test_every_runnable_marker_is_on_a_python_block():
    markers = len(re.findall(r"^<!-- runnable(: slow)? -->$", README, re.M))
    assert markers == len(_runnable(False)) + len(_runnable(True)) and markers >= 2


def test_quick_start_is_runnable_and_short():
    blocks = [m for m in _BLOCK.finditer(_section("Quick start")) if not m["slow"]]
    assert len(blocks) == 1, "the quick start must hold exactly one runnable block"
    lines = [ln for ln in blocks[0]["code"].splitlines() if ln.strip()]
    assert len(lines) <= 10, f"quick start has {len(lines)} lines of code (at most 10)"


@pytest.mark.parametrize("line,code", _runnable(False), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_runnable_block_executes(line, code, tmp_path, monkeypatch):
    stdout = _exec(code, line, tmp_path, monkeypatch)
    if "predict_file(" in code:  # the quick start: its label map and printed shapes
        assert (tmp_path / "t1_tissue.nii.gz").is_file()
        assert "(189, 233, 197)" in stdout and "(64, 4, 6, 4)" in stdout, stdout


@pytest.mark.slow
@pytest.mark.parametrize("line,code", _runnable(True), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_slow_runnable_block_executes(line, code, tmp_path, monkeypatch):
    stdout = _exec(code, line, tmp_path, monkeypatch)
    assert "torch.Size([2, 4, 64, 192, 192])" in stdout and "[32, 64, 128, 256, 320, 320]" in stdout, stdout


def test_keeps_the_two_setup_commands():
    setup = _section("Set-up: two commands")
    assert "make demo" in setup and "make test" in setup
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def _bash_lines() -> list[str]:
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```$", README, re.M | re.S):
        for ln in block.splitlines():
            ln = ln.split("  #", 1)[0].split(" # ", 1)[0].strip()
            if ln and not ln.startswith("#"):
                lines.append(ln)
    return lines


def test_readme_cli_commands_parse():
    from uniseg_hub.cli import build_parser

    commands = [ln for ln in _bash_lines() if ln.startswith("uniseg-hub ")]
    assert {shlex.split(c)[1] for c in commands} >= {"benchmark", "predict", "finetune", "convert", "info", "export"}
    for cmd in commands:
        try:
            args = build_parser().parse_args(shlex.split(cmd)[1:])
        except SystemExit:
            pytest.fail(f"README command does not parse: {cmd}")
        assert callable(args.func)


def test_benchmark_commands_use_the_upstream_weights():
    cmds = [shlex.split(c) for c in _bash_lines() if c.startswith("uniseg-hub benchmark")]
    assert sorted(c[2] for c in cmds) == ["btcv", "vs"]
    assert all(c[c.index("--weights") + 1] == "uniseg-11task" for c in cmds)
    assert "estimate, not measured here" in _section("Reproducing")


def test_example_commands_point_at_files():
    for ln in _bash_lines():
        for word in shlex.split(ln):
            if word.startswith("examples/"):
                assert (ROOT / word).is_file(), word


def test_dotted_names_resolve():
    names = sorted(set(re.findall(r"`(uniseg_hub(?:\.\w+)+)`", README)))
    assert len(names) > 20
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # longest importable module prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                assert hasattr(obj, attr), f"README names {name}, but {'.'.join(parts[:i])} has no {attr!r}"
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"README names {name}, which is not importable")


def test_weights_table_lists_every_registered_name():
    from uniseg_hub import list_pretrained

    table = _section("Available weights")
    for name in list_pretrained():
        assert f"| `{name}` |" in table, f"registered weights {name!r} missing from the README table"


def test_examples_table_lists_every_example():
    table = _section("Examples")
    scripts = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
    assert scripts and all(f"[`examples/{s}`](examples/{s})" in table for s in scripts)


def test_relative_links_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"^[a-z]+://", link)]
    assert "docs/cli.md" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
