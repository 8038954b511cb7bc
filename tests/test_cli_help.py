"""The ``uniseg-hub`` help texts and ``docs/cli.md``: every option of every subcommand is listed, the page is current."""

from __future__ import annotations

import argparse
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from uniseg_hub import cli
from uniseg_hub.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _gen()
PARSER = build_parser()
SUBS = GEN.subparsers(PARSER)


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def test_every_command_module_is_a_subcommand():
    modules = sorted(m.name for m in pkgutil.iter_modules(cli.__path__) if not m.name.startswith("_"))
    assert sorted(SUBS) == modules, f"subcommands {sorted(SUBS)} vs modules in uniseg_hub/cli {modules}"


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in SUBS:
        assert re.search(rf"^\s+{name}\s", out, re.M), f"`uniseg-hub --help` does not list {name!r}:\n{out}"
    for opt in _option_strings(PARSER):
        assert opt in out


@pytest.mark.parametrize("name", sorted(SUBS))
def test_subcommand_help_lists_every_option(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: uniseg-hub {name}"), out[:200]
    sub = SUBS[name]
    missing = [o for o in _option_strings(sub) if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", out)]
    assert not missing, f"`uniseg-hub {name} --help` lacks options {missing}"
    for action in _positionals(sub):
        assert (action.metavar or action.dest) in out
        for choice in action.choices or []:
            assert choice in out, f"choice {choice!r} of {action.dest} missing from the help"
    for action in sub._actions:  # an option's choices and help are shown
        if action.option_strings and action.choices:
            assert "{" + ",".join(map(str, action.choices)) + "}" in out
        if action.help and action.help is not argparse.SUPPRESS:
            words = re.sub(r"\s+", " ", action.help % {"default": action.default, "prog": sub.prog}
                           if "%(" in action.help else action.help)
            assert words[:30] in re.sub(r"\s+", " ", out), f"help of {action.option_strings or action.dest} not shown"


def test_cli_doc_lists_every_subcommand_and_option():
    doc = GEN.DOC.read_text(encoding="utf-8")
    for name, sub in SUBS.items():
        section = doc.split(f"## `uniseg-hub {name}`", 1)
        assert len(section) == 2, f"docs/cli.md has no section for {name!r}"
        body = section[1].split("\n## ", 1)[0]
        missing = [o for o in _option_strings(sub) if o not in body]
        assert not missing, f"docs/cli.md section {name!r} lacks {missing}; run python scripts/gen_cli_docs.py"


def test_cli_doc_is_up_to_date():
    doc = GEN.DOC.read_text(encoding="utf-8")
    if GEN.rendered_by() not in doc:
        pytest.skip(f"docs/cli.md was rendered by another Python's argparse (layout differs); this is "
                    f"{sys.version_info.major}.{sys.version_info.minor}")
    assert GEN.render() == doc, "docs/cli.md is stale: run `python scripts/gen_cli_docs.py`"


def test_generator_check_mode_detects_staleness(tmp_path, monkeypatch):
    monkeypatch.setattr(GEN, "DOC", tmp_path / "cli.md")
    assert GEN.main(["--check"]) == 1  # missing file
    assert GEN.main([]) == 0 and GEN.main(["--check"]) == 0
    (tmp_path / "cli.md").write_text(GEN.DOC.read_text().replace("--weights", "--wieghts", 1))
    assert GEN.main(["--check"]) == 1


def test_console_script_help_runs():
    """The installed entry point (or ``python -m uniseg_hub``) prints the same help as the parser."""
    exe = Path(sys.executable).with_name("uniseg-hub")
    cmd = [str(exe), "--help"] if exe.is_file() else [sys.executable, "-m", "uniseg_hub", "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={"COLUMNS": "100", "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    with GEN.fixed_width(100):
        assert proc.stdout == build_parser().format_help()
