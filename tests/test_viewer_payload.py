"""The viewer's payload: typed arrays round-trip through base64, quantisation errors stay within
their bounds, colour ranges cover the maps, the leaderboard ranks by validation loss, and the
page inlines a payload that cannot break out of its script element."""

from __future__ import annotations

import json

import numpy as np
import pytest
from leads_server.viewer import (
    app_html,
    candidate_scene,
    comparison_scenes,
    leaderboard,
    render_html,
    viewer_payload,
)
from leads_server.viewer.payload import (
    AT_NAN,
    AT_STEPS,
    at_range,
    decode_array,
    decode_at,
    decode_potential,
    encode_array,
    encode_at,
    encode_potential,
    frame_stride,
    surface_triangles,
)
from leads_server.viewer.render import PAYLOAD_MARKER

from leads_engine.heart_mesh import make_lv_mesh
from leads_engine.metrics import activation_times


@pytest.mark.parametrize("dtype", ["float32", "uint32", "uint16", "uint8"])
def test_typed_arrays_round_trip_exactly(dtype: str) -> None:
    rng = np.random.default_rng(0)
    values = (rng.random((7, 3)) * 200).astype(dtype)
    encoded = json.loads(json.dumps(encode_array(values, dtype)))
    decoded = decode_array(encoded)
    assert decoded.dtype == np.dtype(dtype) and decoded.shape == (7, 3)
    np.testing.assert_array_equal(decoded, values)


def test_activation_times_quantise_within_half_a_step_and_keep_nan() -> None:
    rng = np.random.default_rng(1)
    at = rng.uniform(3.0, 250.0, 5000)
    at[::97] = np.nan
    lo, hi = at_range(at)
    assert lo == pytest.approx(np.nanmin(at)) and hi == pytest.approx(np.nanmax(at))
    encoded = encode_at(at, lo, hi)
    decoded = decode_at(json.loads(json.dumps(encoded)))
    assert np.array_equal(np.isnan(decoded), np.isnan(at))
    step = (hi - lo) / AT_STEPS
    assert np.nanmax(np.abs(decoded - at)) <= step / 2 + 1e-12
    codes = decode_array(encoded)
    assert codes[np.isnan(at)].tolist() == [AT_NAN] * int(np.isnan(at).sum())
    assert codes[~np.isnan(at)].max() <= AT_STEPS


def test_values_outside_the_range_are_clipped_to_its_ends() -> None:
    decoded = decode_at(encode_at([-5.0, 5.0, 50.0], 0.0, 10.0))
    np.testing.assert_allclose(decoded, [0.0, 5.0, 10.0], atol=1e-3)


def test_potential_quantises_to_uint8_within_half_a_level_and_subsamples_frames() -> None:
    rng = np.random.default_rng(2)
    u = rng.random((40, 300)).astype(np.float32)
    u[3, 4] = 1.7  # overshoot and NaN are clipped / zeroed, never wrapped
    u[5, 6] = np.nan
    encoded = encode_potential(u, stride=3)
    decoded = decode_potential(encoded)
    assert decoded.shape == (14, 300)
    inside = np.clip(np.nan_to_num(u[::3]), 0, 1)
    assert np.max(np.abs(decoded - inside)) <= 1 / 510 + 1e-9
    assert frame_stride(251, 50_000, 4_000_000) == 4
    assert frame_stride(251, 1119) == 1


def test_colour_range_covers_every_finite_map_and_never_collapses() -> None:
    assert at_range(np.array([2.0, np.nan]), np.array([np.nan, 9.0])) == (2.0, 9.0)
    assert at_range(np.array([np.nan])) == (0.0, 1.0)
    lo, hi = at_range(np.array([4.0, 4.0]))
    assert hi > lo


def test_boundary_of_a_tetrahedral_mesh_is_its_outward_faces() -> None:
    points = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], float)
    tets = np.array([[0, 1, 2, 3], [1, 2, 3, 4]])
    faces = surface_triangles(points, tets)
    assert len(faces) == 6  # 8 faces, the shared one (1, 2, 3) is inside
    assert not any(sorted(f) == [1, 2, 3] for f in faces.tolist())
    centre = points.mean(axis=0)
    for a, b, c in points[faces]:
        assert np.dot(np.cross(b - a, c - a), a - centre) > 0


def _beat() -> tuple:
    mesh = make_lv_mesh(200)
    t = np.arange(0.0, 60.0, 2.0)
    distance = np.linalg.norm(mesh.points - mesh.points[0], axis=1)
    u_true = (t[:, None] > distance[None, :] * 1.5).astype(np.float32)
    u_pred = (t[:, None] > distance[None, :] * 1.7).astype(np.float32)
    return mesh, t, u_true, u_pred


def test_candidate_scene_decodes_to_the_maps_it_was_built_from() -> None:
    mesh, t, u_true, u_pred = _beat()
    at_true, at_pred = activation_times(u_true, t), activation_times(u_pred, t)
    scene = candidate_scene("beat", mesh.points, mesh.cells, t, at_true, at_pred, u_true, u_pred, 0)
    scene = json.loads(json.dumps(scene))
    lo, hi = scene["color_range"]
    assert lo == pytest.approx(np.nanmin([at_true, at_pred]))
    assert hi == pytest.approx(np.nanmax([at_true, at_pred]))
    true, pred, error = scene["panels"]
    assert [p["role"] for p in scene["panels"]] == ["true", "pred", "error"]
    assert true["range"] == pred["range"] == [lo, hi]
    tolerance = (hi - lo) / AT_STEPS
    np.testing.assert_allclose(decode_at(true["values"]), at_true, atol=tolerance, equal_nan=True)
    np.testing.assert_allclose(decode_at(pred["values"]), at_pred, atol=tolerance, equal_nan=True)
    expected_error = np.abs(at_pred - at_true)
    assert error["range"] == [0.0, pytest.approx(np.nanmax(expected_error))]
    np.testing.assert_allclose(
        decode_at(error["values"]), expected_error, atol=error["range"][1] / AT_STEPS
    )
    np.testing.assert_array_equal(decode_potential(true["potential"]), u_true)
    np.testing.assert_array_equal(decode_potential(pred["potential"]), u_pred)
    positions = decode_array(scene["mesh"]["positions"])
    np.testing.assert_allclose(positions, mesh.points.astype(np.float32))
    np.testing.assert_array_equal(decode_array(scene["mesh"]["faces"]), mesh.cells)
    assert scene["pacing_site"] == 0 and scene["t"] == t.tolist()


def test_a_scene_without_prediction_holds_the_data_alone() -> None:
    mesh, t, u_true, _ = _beat()
    scene = candidate_scene("data", mesh.points, mesh.cells, t, activation_times(u_true, t))
    assert [p["role"] for p in scene["panels"]] == ["true"]
    assert "potential" not in scene["panels"][0]


def test_large_meshes_get_fewer_frames_within_the_budget() -> None:
    mesh, t, u_true, u_pred = _beat()
    at = activation_times(u_true, t)
    scene = candidate_scene(
        "big", mesh.points, mesh.cells, t, at, at, u_true, u_pred, max_potential_values=2000
    )
    frames = len(scene["t"])
    assert frames * 200 <= 2000 + 200 * 2 and frames < len(t)
    assert decode_array(scene["panels"][0]["potential"]).shape == (frames, 200)


def test_comparison_scenes_share_one_colour_range_and_rank_errors() -> None:
    mesh, t, u_true, u_pred = _beat()
    at_true = activation_times(u_true, t)
    maps, errors = comparison_scenes(
        "AP", mesh.points, mesh.cells, at_true, {"A": at_true + 1.0, "B": at_true * 2}
    )
    assert [p["title"] for p in maps["panels"]] == ["truth", "A", "B"]
    assert len({tuple(p["range"]) for p in maps["panels"]}) == 1
    assert maps["color_range"] == [
        pytest.approx(np.nanmin(at_true)),
        pytest.approx(np.nanmax(at_true)),
    ]
    doubled = decode_at(maps["panels"][2]["values"])  # beyond the colour range, kept in value
    np.testing.assert_allclose(doubled, at_true * 2, atol=np.nanmax(at_true * 2) / AT_STEPS)
    a, b = (decode_at(p["values"]) for p in errors["panels"])
    assert np.nanmax(np.abs(a - 1.0)) < 1e-2
    assert np.nanmean(b) > np.nanmean(a)


def test_leaderboard_ranks_by_validation_loss_and_tracks_the_best_so_far() -> None:
    rows = [
        {"candidate_id": "c1", "status": "ok", "val_loss": 0.5, "operation": "select"},
        {"candidate_id": "c2", "status": "unstable", "val_loss": None, "operation": "refine"},
        {"candidate_id": "c3", "status": "ok", "val_loss": 0.1, "operation": "modify"},
        {"candidate_id": "c4", "status": "ok", "val_loss": float("nan"), "operation": "select"},
    ]
    section = leaderboard(rows)
    assert [r["candidate_id"] for r in section["leaderboard"]] == ["c3", "c1", "c2", "c4"]
    assert [r["rank"] for r in section["leaderboard"]] == [1, 2, 3, 4]
    assert [p["best"] for p in section["trajectory"]] == [0.5, 0.5, 0.1, 0.1]
    json.dumps(section, allow_nan=False)  # NaN never reaches the page


def test_the_page_inlines_the_payload_safely() -> None:
    hostile = "</script><script>alert(1)</script>"
    payload = viewer_payload("candidate", hostile, [], info={"note": hostile + "\u2028"})
    page = render_html(payload)
    assert PAYLOAD_MARKER in app_html() and PAYLOAD_MARKER not in page
    start = page.index('id="leads-payload">') + len('id="leads-payload">')
    inlined = page[start : page.index("</script>", start)]
    assert json.loads(inlined) == payload
    assert "<" not in inlined and "http://" not in page and "https://" not in page


def test_maps_of_the_wrong_shape_are_refused_by_name() -> None:
    mesh, t, u_true, _ = _beat()
    at = activation_times(u_true, t)
    with pytest.raises(ValueError, match=r"at_true must have shape \(200,\)"):
        candidate_scene("bad", mesh.points, mesh.cells, t, at[None, :])
    with pytest.raises(ValueError, match="u_pred must have shape"):
        candidate_scene("bad", mesh.points, mesh.cells, t, at, at, u_true, u_true[:-1])
