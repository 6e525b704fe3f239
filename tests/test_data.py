"""Preprocessing: RSS, header facts, subject-level splits, and one-line errors on damaged raw files."""

from __future__ import annotations

import shutil

import fastmri
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from fastmri.data.transforms import center_crop

from ldpm import LdpmError
from ldpm.data.preprocess import build_index, nominal_field, preprocess, read_volume_info, volume_slices
from ldpm.io import read_images


def test_rss_equals_fastmri_rss(raw_dir):
    path = sorted((raw_dir / "brain").glob("*.h5"))[0]
    with h5py.File(path) as fh:
        kspace = fh["kspace"][:2]
    # independent route: fastMRI's own tensor helpers, coil by coil through to_tensor, crop last
    coil_images = fastmri.ifft2c(fastmri.data.transforms.to_tensor(kspace))
    full = fastmri.rss(fastmri.complex_abs(coil_images), dim=1)
    for crop in (64, 48, 37):  # no crop, even and odd crops (ours crops between the two FFT passes)
        ours = volume_slices(kspace, crop_size=crop, image_size=crop)
        torch.testing.assert_close(ours, center_crop(full, (crop, crop)).float(), rtol=1e-5, atol=1e-6)


def test_index_reads_written_header_facts(prepared, raw_dir):
    index = pd.read_csv(prepared / "index.csv")
    for row in index.itertuples():
        with h5py.File(row.path) as fh:
            assert row.acquisition == fh.attrs["acquisition"]
            assert row.patient_id == fh.attrs["patient_id"]
            header = fh["ismrmrd_header"][()]
            header = header.decode() if isinstance(header, bytes) else header
        assert f"{row.field_strength_T}" in header or f"{row.field_strength_T:.3f}".rstrip("0") in header
        assert row.field_strength == nominal_field(row.field_strength_T)
    assert set(index.field_strength) == {1.5, 3.0}
    assert index.sha256.str.len().eq(64).all()


def test_splits_are_subject_disjoint_and_complete(prepared):
    index = pd.read_csv(prepared / "index.csv")
    tables = {s: pd.read_csv(prepared / f"{s}.csv") for s in ("train", "val", "test")}
    brain = {s: set(t.loc[t.dataset == "brain", "patient_id"]) for s, t in tables.items()}
    assert not (brain["train"] & brain["val"]) and not (brain["train"] & brain["test"]) and not (brain["val"] & brain["test"])
    assert set(tables["test"].dataset) == {"brain", "ood"}  # out-of-distribution data is test only
    assert "ood" not in set(tables["train"].dataset) | set(tables["val"].dataset)
    # every kept slice is there: n_slices - 3 per volume
    kept = sum(len(t) for t in tables.values())
    assert kept == int((index.n_slices - 3).sum())
    for s, t in tables.items():
        images = read_images(prepared / f"{s}.h5")
        assert images.shape == (len(t), 32, 32)
        for _, rows in t.groupby("volume"):  # normalised per volume to max 1
            assert images[rows.index].max() == pytest.approx(1.0, abs=1e-6)


def test_truncated_h5_is_one_line_error(tmp_path, raw_dir):
    src = sorted((raw_dir / "brain").glob("*.h5"))[0]
    bad = tmp_path / "brain" / "file_brain_truncated.h5"
    bad.parent.mkdir()
    bad.write_bytes(src.read_bytes()[:4096])
    with pytest.raises(LdpmError) as err:
        build_index({"brain": {"role": "in_distribution", "paths": [str(bad.parent)]}}, [], tmp_path / "index.csv")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "index.csv").exists()


def test_non_h5_file_is_one_line_error(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("not hdf5")
    with pytest.raises(LdpmError, match="notes.h5: not a readable HDF5 file"):
        read_volume_info(bad)


def test_missing_kspace_and_nan_are_named(tmp_path, raw_dir):
    src = sorted((raw_dir / "brain").glob("*.h5"))[0]
    no_kspace = tmp_path / "no_kspace.h5"
    shutil.copy(src, no_kspace)
    with h5py.File(no_kspace, "a") as fh:
        del fh["kspace"]
    with pytest.raises(LdpmError, match="no_kspace.h5: no 'kspace' dataset"):
        read_volume_info(no_kspace)

    nan_dir = tmp_path / "nan"
    nan_dir.mkdir()
    shutil.copy(src, nan_dir / src.name)
    with h5py.File(nan_dir / src.name, "a") as fh:
        k = fh["kspace"][()]
        k[0, 0, 0, 0] = np.nan
        fh["kspace"][...] = k
    # NaN needs the other volumes too (a split needs >= 3 subjects): index the clean set plus the damaged file
    brain = [p for p in (raw_dir / "brain").glob("*.h5") if p.name != src.name]
    for p in brain:
        shutil.copy(p, nan_dir / p.name)
    build_index({"brain": {"role": "in_distribution", "paths": [str(nan_dir)]}}, [], tmp_path / "index.csv")
    with pytest.raises(LdpmError, match="NaN or Inf"):
        preprocess(tmp_path / "index.csv", tmp_path / "out", crop_size=64, image_size=32, drop_last_slices=3,
                   val_fraction=0.2, test_fraction=0.34, seed=0)
    assert not list((tmp_path / "out").glob("*.h5")), "no partial outputs after a failure"


def test_unknown_acquisition_and_missing_field_strength(tmp_path, raw_dir):
    src = sorted((raw_dir / "brain").glob("*.h5"))[0]
    odd = tmp_path / "odd.h5"
    shutil.copy(src, odd)
    with h5py.File(odd, "a") as fh:
        fh.attrs["acquisition"] = "AXDWI"
    with pytest.raises(LdpmError, match="unknown acquisition 'AXDWI'.*data.extra_acquisitions"):
        read_volume_info(odd)
    assert read_volume_info(odd, ["AXDWI"])["acquisition"] == "AXDWI"

    with h5py.File(odd, "a") as fh:
        header = fh["ismrmrd_header"][()]
        header = header.decode() if isinstance(header, bytes) else header
        start, end = header.index("<systemFieldStrength_T>"), header.index("</systemFieldStrength_T>")
        del fh["ismrmrd_header"]
        fh["ismrmrd_header"] = header[:start] + header[end + len("</systemFieldStrength_T>"):]
    with pytest.raises(LdpmError, match="odd.h5: .*systemFieldStrength_T"):
        read_volume_info(odd, ["AXDWI"])


def test_too_few_slices_for_the_drop(tmp_path, prepared):
    with pytest.raises(LdpmError, match="data.drop_last_slices=9"):
        preprocess(prepared / "index.csv", tmp_path, crop_size=64, image_size=32, drop_last_slices=9,
                   val_fraction=0.2, test_fraction=0.34, seed=0)
