"""The rich live view renders candidates, the thought and training progress."""

from __future__ import annotations

import asyncio
import io

from leads_agent.state import Candidate
from leads_agent.ui import LiveView
from rich.console import Console


def test_live_view_renders_table_thought_and_progress():
    out = io.StringIO()
    console = Console(file=out, width=140, force_terminal=False)
    with LiveView(console) as view:
        view.session("s-1", {"dataset": {"name": "tiny"}})
        view.thought(2, "Screening reaction_B under laplacian_global.")
        view.candidates(
            [
                Candidate(
                    "c-1",
                    "select",
                    "reaction_A",
                    "laplacian_global",
                    "ok",
                    val_loss=0.25,
                    parameter_count=7,
                    step=1,
                ),
                Candidate("c-2", "select", "reaction_B", "gcn", "unstable", step=2),
            ]
        )
        view.training("step 2", 3)
        asyncio.run(view.progress(2, 3, "epoch 2: val 0.1"))
        view.message("step 2 done")
    text = out.getvalue()
    for expected in (
        "session s-1",
        "reaction_A",
        "laplacian_global",
        "0.25",
        "unstable",
        "Screening reaction_B",
        "2/3 epochs",
        "step 2 done",
    ):
        assert expected in text
