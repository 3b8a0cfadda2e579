"""The bench's activation maps in the 3-D viewer: one page from the stored runs, per data set a
scene of every method's map against the truth and one of their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from leads_bench.config import LABELS, Run
from leads_bench.viewer import VIEWER_NAME, write_activation_viewer
from leads_server.viewer.payload import AT_STEPS, decode_at

from leads_engine.metrics import activation_times


def _inlined(page: str) -> dict:
    start = page.index('id="leads-payload">') + len('id="leads-payload">')
    return json.loads(page[start : page.index("</script>", start)])


def test_the_bench_viewer_holds_every_method_against_the_truth(tmp_path: Path, tiny) -> None:
    path = tiny.save(tmp_path / "tiny.npz")
    at_true = activation_times(tiny.u[tiny.indices("test")[:1]], tiny.t)
    (tmp_path / "runs").mkdir()
    runs = [Run("physics", "ap", 0), Run("hybrid-gat", "ap", 0), Run("all-neural", "ap", 0)]
    shifts = {"physics": 0.5, "hybrid-gat": 3.0}
    for run, shift in shifts.items():
        np.savez_compressed(
            tmp_path / "runs" / f"{Run(run, 'ap', 0).key}.npz",
            at_pred=at_true + shift,
            at_true=at_true,
        )
    assert write_activation_viewer(tmp_path, runs, {"ap": path}, []) is None
    page = write_activation_viewer(tmp_path, runs, {"ap": path}, [r.method for r in runs])
    assert page == tmp_path / VIEWER_NAME
    payload = _inlined(page.read_text())
    assert payload["kind"] == "comparison"
    maps, errors = payload["scenes"]
    assert maps["name"] == "AP: activation time" and errors["name"] == "AP: absolute error"
    titles = [p["title"] for p in maps["panels"]]
    assert titles == ["truth", LABELS["physics"], LABELS["hybrid-gat"]]  # no run, no panel
    lo, hi = maps["color_range"]
    truth = decode_at(maps["panels"][0]["values"])
    np.testing.assert_allclose(truth, at_true[0], atol=(hi - lo) / AT_STEPS, equal_nan=True)
    mean_errors = [np.nanmean(decode_at(p["values"])) for p in errors["panels"]]
    np.testing.assert_allclose(mean_errors, [0.5, 3.0], atol=1e-2)
    assert maps["pacing_site"] == int(tiny.pacing_site[tiny.indices("test")[0]])
