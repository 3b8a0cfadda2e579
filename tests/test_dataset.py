"""Tests of the LEADS data-set format: round trip, plain-numpy readability, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import corrupt_deflate_stream, dataset_fields

from leads_engine import dataset as dataset_module
from leads_engine.dataset import (
    FORMAT_VERSION,
    REQUIRED_KEYS,
    DatasetError,
    EPDataset,
    datasets_dir,
    load_dataset,
    resolve_dataset_path,
)


def assert_same(a: EPDataset, b: EPDataset) -> None:
    for key in ("points", "cells", "u", "t", "pacing_site", "split", "conductivity"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key


def write_npz(path, **arrays) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def raw_arrays(small_mesh, **overrides) -> dict:
    """The arrays of a valid file as ``np.savez`` keywords, with overrides."""
    fields = dataset_fields(small_mesh)
    fields["meta"] = np.array(json.dumps(fields["meta"]))
    return {**fields, **overrides}


# ---- round trip ------------------------------------------------------------------------------


def test_save_load_round_trip(make_dataset, tmp_path):
    ds = make_dataset()
    path = ds.save(tmp_path / "sets" / "tiny.npz")
    assert path == tmp_path / "sets" / "tiny.npz" and path.exists()
    assert not list(path.parent.glob("*.partial"))
    loaded = load_dataset(path)
    assert_same(ds, loaded)
    assert loaded.u.dtype == np.float32 and loaded.t.dtype == np.float64
    assert loaded.pacing_site.dtype == np.int64
    assert loaded.meta == {**ds.meta, "format_version": FORMAT_VERSION}
    assert loaded.summary() == {**ds.summary()}
    assert loaded.name == "tiny"


def test_file_is_plain_numpy(make_dataset, tmp_path):
    ds = make_dataset()
    path = ds.save(tmp_path / "tiny.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == set(REQUIRED_KEYS)
        assert np.array_equal(archive["u"], ds.u)
        assert archive["split"].dtype.kind == "U"
        assert archive["split"].tolist() == ["train", "train", "val", "test"]
        meta = json.loads(str(archive["meta"]))
    assert meta["nested"] == [1, 2] and meta["format_version"] == FORMAT_VERSION


def test_save_adds_the_suffix(make_dataset, tmp_path):
    path = make_dataset().save(tmp_path / "noext")
    assert path.name == "noext.npz" and path.exists()


def test_extras_round_trip(make_dataset, small_mesh, tmp_path):
    rng = np.random.default_rng(1)
    H = rng.normal(size=(5, small_mesh.n_nodes))
    signals = rng.normal(size=(4, 11, 5))
    ds = make_dataset(extras={"H": H, "signals": signals})
    loaded = load_dataset(ds.save(tmp_path / "rec.npz"))
    assert np.array_equal(loaded.extras["H"], H)
    assert np.array_equal(loaded.extras["signals"], signals)
    with pytest.raises(DatasetError, match="signals"):
        make_dataset(extras={"signals": signals[:, :5]})
    with pytest.raises(DatasetError, match="H"):
        make_dataset(extras={"H": H[:, :10]})


def test_split_indices_and_summary(make_dataset):
    ds = make_dataset()
    assert ds.indices("train").tolist() == [0, 1]
    assert ds.indices("val").tolist() == [2] and ds.indices("test").tolist() == [3]
    with pytest.raises(DatasetError, match="unknown split"):
        ds.indices("holdout")
    summary = ds.summary()
    assert summary["split"] == {"train": 2, "val": 1, "test": 1}
    assert summary["frames"] == 11 and summary["nodes"] == 200
    assert summary["frame_interval_ms"] == pytest.approx(2.0)
    assert ds.mesh().n_nodes == 200


# ---- locating data sets ----------------------------------------------------------------------


def test_load_by_name_under_leads_home(make_dataset, leads_home):
    assert dataset_module.leads_home() == leads_home and datasets_dir() == leads_home / "datasets"
    ds = make_dataset()
    ds.save(datasets_dir() / "tiny.npz")
    assert resolve_dataset_path("tiny") == leads_home / "datasets" / "tiny.npz"
    assert_same(load_dataset("tiny"), ds)


def test_unknown_name_lists_known_sets(make_dataset, leads_home):
    with pytest.raises(DatasetError, match="known: none"):
        load_dataset("absent")
    make_dataset().save(datasets_dir() / "alpha.npz")
    make_dataset().save(datasets_dir() / "beta.npz")
    with pytest.raises(DatasetError, match="'gamma'") as info:
        load_dataset("gamma")
    assert "alpha, beta" in str(info.value)


# ---- refusals of corrupted files -------------------------------------------------------------


def test_garbage_bytes_are_refused(leads_home):
    path = leads_home / "garbage.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage, not a zip archive" * 50)
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_dataset(path)
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_file_is_refused(make_dataset, tmp_path, fraction):
    path = make_dataset().save(tmp_path / "tiny.npz")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset(path)


def test_flipped_bytes_fail_the_crc(make_dataset, tmp_path):
    path = make_dataset().save(tmp_path / "tiny.npz")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the compressed u array
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset(path)


@pytest.mark.parametrize("member", ["u.npy", "meta.npy"])
def test_damaged_deflate_stream_is_refused(make_dataset, tmp_path, member):
    path = make_dataset().save(tmp_path / "tiny.npz")
    corrupt_deflate_stream(path, member)
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset(path)


@pytest.mark.parametrize("missing", ["u", "conductivity", "meta"])
def test_missing_key_is_named(small_mesh, tmp_path, missing):
    arrays = raw_arrays(small_mesh)
    del arrays[missing]
    write_npz(tmp_path / "partial.npz", **arrays)
    with pytest.raises(DatasetError, match=f"missing field.*'{missing}'"):
        load_dataset(tmp_path / "partial.npz")


@pytest.mark.parametrize(
    ("meta", "message"),
    [("{not json", "meta is not valid JSON"), ("[1, 2, 3]", "meta: must be a JSON object")],
)
def test_meta_must_be_a_json_object(small_mesh, tmp_path, meta, message):
    write_npz(tmp_path / "bad.npz", **raw_arrays(small_mesh, meta=np.array(meta)))
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "bad.npz")


def test_plain_savez_file_loads(small_mesh, tmp_path):
    """A file written by another tool with plain numpy (no LEADS) is accepted."""
    write_npz(tmp_path / "foreign.npz", **raw_arrays(small_mesh))
    ds = load_dataset(tmp_path / "foreign.npz")
    assert ds.n_samples == 4 and ds.meta["name"] == "tiny"


def _bad_fields(mesh) -> dict[str, tuple[dict, str]]:
    good = dataset_fields(mesh)
    u_nan = good["u"].copy()
    u_nan[1, 3, 7] = np.nan
    t_back = good["t"].copy()
    t_back[5] = t_back[4]
    negative = good["conductivity"].copy()
    negative[10] = -0.1
    return {
        "u_nan": ({"u": u_nan}, r"u: 1 NaN/Inf values \(first at \[sample, frame, node\] "
                                r"\(1, 3, 7\)\)"),
        "u_nodes": ({"u": good["u"][:, :, :150]}, "u: has 150 nodes but the mesh has 200"),
        "u_2d": ({"u": good["u"][0]}, r"u: expected \[samples, frames, nodes\]"),
        "u_range": ({"u": good["u"] * 10}, "u: values in .* outside the normalised TMP"),
        "t_flat": ({"t": t_back}, "t: frame times must be strictly increasing"),
        "t_length": ({"t": good["t"][:-1]}, r"t: expected \[11\] frame times"),
        "site_high": ({"pacing_site": np.array([0, 1, 2, 200])}, r"pacing_site: \[200\] not in"),
        "site_negative": ({"pacing_site": np.array([0, -1, 2, 3])}, "pacing_site: .* not in"),
        "site_float": ({"pacing_site": np.array([0.0, 1, 2, 3])}, "pacing_site: must be integer"),
        "split_label": (
            {"split": np.array(["train", "train", "valid", "test"])},
            r"split: unknown labels \['valid'\]",
        ),
        "split_no_train": (
            {"split": np.array(["val", "val", "test", "test"])}, "split: no training sample"
        ),
        "sigma_negative": ({"conductivity": negative}, "conductivity: must be finite and positive"),
        "sigma_shape": ({"conductivity": negative[:-1]}, r"conductivity: expected \[200\]"),
        "cells": ({"cells": np.array(mesh.cells) + 1000}, "points/cells"),
    }  # fmt: skip


BAD_CASES = [
    "u_nan", "u_nodes", "u_2d", "u_range", "t_flat", "t_length", "site_high", "site_negative",
    "site_float", "split_label", "split_no_train", "sigma_negative", "sigma_shape", "cells",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_inconsistent_fields_are_refused_in_memory(small_mesh, case):
    overrides, message = _bad_fields(small_mesh)[case]
    with pytest.raises(DatasetError, match=message):
        EPDataset(**{**dataset_fields(small_mesh), **overrides})


@pytest.mark.parametrize("case", ["u_nan", "u_nodes", "t_flat", "site_high", "split_label",
                                  "sigma_negative"])  # fmt: skip
def test_inconsistent_files_are_refused_with_path(small_mesh, tmp_path, case):
    overrides, message = _bad_fields(small_mesh)[case]
    path = tmp_path / f"{case}.npz"
    write_npz(path, **raw_arrays(small_mesh, **overrides))
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(path)
    assert str(info.value).startswith(f"{path}: ")
