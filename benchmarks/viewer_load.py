"""Load-to-first-frame time of the 3-D viewer on a large mesh, in headless Chromium.

Builds a ventricle-like surface of ``--nodes`` nodes (the bundled mesh's generator), a
synthetic beat on it (activation time proportional to the graph distance from a pacing site,
a predicted map 5% slower, the potential an upstroke at the activation time and a return to
rest 200 ms later, 251 frames of 2 ms), writes the viewer page with that payload (the same
quantised arrays the server sends) and opens it in Debian's Chromium through chromedriver.
Prints the page size and, per repeat, the time from navigation start to the end of the first
drawn frame (``performance.now()`` after ``gl.finish()``, so parsing, decoding, buffer uploads
and the first draw count) and the wall time from ``driver.get`` to the ready state.

    python benchmarks/viewer_load.py                # 50 000 nodes, 3 repeats
    python benchmarks/viewer_load.py --nodes 1119 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from leads_server.viewer import candidate_scene, leaderboard, viewer_payload, write_html  # noqa: E402

from leads_engine.heart_mesh import make_lv_mesh  # noqa: E402


def synthetic_beat(nodes: int) -> tuple[dict, float]:
    """The payload of a synthetic beat on a ``nodes``-node mesh, and the mesh build time."""
    started = time.perf_counter()
    mesh = make_lv_mesh(nodes)
    built = time.perf_counter() - started
    t = np.arange(0.0, 502.0, 2.0)
    distance = mesh.graph_distances(0)[0]
    at_true = distance / 0.6  # mm over mm/ms
    at_pred = at_true * 1.05

    def potential(at: np.ndarray) -> np.ndarray:
        rise = 1 / (1 + np.exp(-(t[:, None] - at[None, :]) / 1.0))
        fall = 1 / (1 + np.exp((t[:, None] - at[None, :] - 200.0) / 10.0))
        return (rise * fall).astype(np.float32)

    scene = candidate_scene(
        f"synthetic beat, {nodes} nodes",
        mesh.points,
        mesh.cells,
        t,
        at_true,
        at_pred,
        potential(at_true),
        potential(at_pred),
        pacing_site=0,
    )
    rows = [
        {
            "candidate_id": f"c-{i}",
            "operation": "select",
            "reaction": "reaction_A",
            "diffusion": "gcn",
            "status": "ok",
            "val_loss": 10.0**-i,
        }  # fmt: skip
        for i in range(1, 16)
    ]
    payload = viewer_payload("candidate", f"load benchmark ({nodes} nodes)", [scene],
                             session=leaderboard(rows))  # fmt: skip
    return payload, built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshot", type=Path, default=None, help="save the last view here")
    args = parser.parse_args()

    from test_viewer_browser import chromium_driver  # the tests' headless Chromium set-up

    payload, built = synthetic_beat(args.nodes)
    folder = Path(tempfile.mkdtemp(prefix="leads-viewer-load-"))
    page = write_html(payload, folder / "viewer.html")
    scene = payload["scenes"][0]
    print(
        f"mesh: {scene['mesh']['n_nodes']} nodes, {scene['mesh']['n_faces']} triangles "
        f"(built in {built:.1f} s); {len(scene['t'])} potential frames; page "
        f"{page.stat().st_size / 1e6:.1f} MB"
    )
    driver = chromium_driver()
    firsts, walls = [], []
    try:
        for repeat in range(args.repeats):
            started = time.perf_counter()
            driver.get(page.as_uri())
            while driver.execute_script("return document.body.dataset.state") not in (
                "ready",
                "error",
            ):
                time.sleep(0.02)
            wall = time.perf_counter() - started
            timings = driver.execute_script("return window.leadsViewer.timings")
            error = driver.execute_script("return window.leadsViewer.error")
            if error:
                raise SystemExit(f"the viewer failed: {error}")
            firsts.append(timings["firstFrame"] / 1000)
            walls.append(wall)
            print(
                f"repeat {repeat + 1}: first frame {timings['firstFrame'] / 1000:.2f} s after "
                f"navigation start (JSON parse {timings.get('parse', 0):.0f} ms, decode+upload+"
                f"draw {timings['show']:.0f} ms); driver.get to ready {wall:.2f} s"
            )
        if args.screenshot:
            driver.save_screenshot(str(args.screenshot))
    finally:
        driver.quit()
    print(
        f"median load-to-first-frame {statistics.median(firsts):.2f} s "
        f"(wall {statistics.median(walls):.2f} s) for {args.nodes} nodes; target < 2 s"
    )


if __name__ == "__main__":
    main()
