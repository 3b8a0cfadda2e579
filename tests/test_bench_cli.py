"""``leads-bench`` and its thin entry point ``leads-agent bench``, which runs the bench in its
own process so that the client never imports the engine."""

from __future__ import annotations

import subprocess
import sys

from leads_agent import cli as agent_cli
from leads_bench.cli import main


def test_bench_refuses_an_llm_without_its_key(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert main(["--quick", "--out", str(tmp_path), "--llm", "anthropic"]) == 2
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err
    assert not (tmp_path / "results.md").exists()


def test_leads_agent_bench_hands_its_arguments_to_leads_bench(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    code = agent_cli.main(["bench", "--quick", "--out", str(tmp_path), "--llm", "anthropic"])
    assert code == 2
    assert "ANTHROPIC_API_KEY" in capfd.readouterr().err
    assert agent_cli.main(["bench", "--help"]) == 0
    assert "usage: leads-agent bench [-h] [--quick]" in capfd.readouterr().out


def test_the_client_imports_neither_the_engine_nor_the_bench():
    probe = (
        "import pkgutil, importlib, sys, leads_agent\n"
        "for module in pkgutil.iter_modules(leads_agent.__path__):\n"
        "    importlib.import_module('leads_agent.' + module.name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'leads_engine', 'leads_bench', 'leads_server'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
