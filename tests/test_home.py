"""``$LEADS_HOME``: one rule in the engine and the same rule in the client (which cannot import
the engine). Unset or blank means ``~/.leads``; ``~`` is expanded."""

from __future__ import annotations

from pathlib import Path

import pytest
from leads_agent.agent import report_folder
from leads_agent.connection import server_log_path
from leads_agent.home import leads_home as client_home

from leads_engine.dataset import datasets_dir
from leads_engine.dataset import leads_home as engine_home


@pytest.mark.parametrize("value", [None, "", "   ", "~/twins", "/data/leads", "relative/home"])
def test_engine_and_client_resolve_leads_home_alike(value, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("LEADS_HOME", raising=False)
    else:
        monkeypatch.setenv("LEADS_HOME", value)
    expected = {
        None: tmp_path / ".leads",
        "": tmp_path / ".leads",
        "   ": tmp_path / ".leads",
        "~/twins": tmp_path / "twins",
        "/data/leads": Path("/data/leads"),
        "relative/home": Path("relative/home"),
    }[value]
    assert engine_home() == client_home() == expected


def test_every_default_folder_is_under_leads_home(leads_home):
    assert datasets_dir() == leads_home / "datasets"
    assert server_log_path() == leads_home / "logs" / "leads-server.log"
    assert report_folder(None, "s-1") == leads_home / "reports" / "s-1"
    assert report_folder("elsewhere", "s-1") == Path("elsewhere")
