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


def _copy_brain(raw_dir, dest):
    shutil.copytree(raw_dir / "brain", dest)
    return sorted(dest.glob("*.h5"))


def test_narrower_volume_is_padded_and_logged(tmp_path, raw_dir, caplog):
    """fastMRI brain has volumes narrower than the crop (FLAIR 203): they are padded, not a reason to stop."""
    files = _copy_brain(raw_dir, tmp_path / "brain")
    narrow = files[0]
    with h5py.File(narrow, "a") as fh:
        k = fh["kspace"][()]  # (slices, coils, 128, 64): keep the central 48 phase-encode columns
        del fh["kspace"]
        fh["kspace"] = k[..., 8:56]
    build_index({"brain": {"role": "in_distribution", "paths": [str(tmp_path / "brain")]}}, [],
                tmp_path / "index.csv")
    caplog.set_level("INFO", logger="ldpm.data")
    counts = preprocess(tmp_path / "index.csv", tmp_path / "out", crop_size=64, image_size=32, drop_last_slices=3,
                        val_fraction=0.2, test_fraction=0.34, seed=0)
    assert sum(counts.values()) == sum(5 - 3 for _ in files)
    for split in ("train", "val", "test"):
        table = pd.read_csv(tmp_path / "out" / f"{split}.csv")
        if narrow.stem in set(table.volume):
            images = read_images(tmp_path / "out" / f"{split}.h5")[table.index[table.volume == narrow.stem]]
            break
    assert images.shape == (2, 32, 32) and images.max() == pytest.approx(1.0, abs=1e-6)
    # 8 zero columns each side at 64², 4 at 32²: the outer two stay exactly zero through the antialiased resize
    assert not images[..., :2].any() and not images[..., -2:].any() and images[..., 8:24].all()
    lines = [r.getMessage() for r in caplog.records if "smaller than data.crop_size" in r.getMessage()]
    assert len(lines) == 1 and str(narrow) in lines[0] and "128x48" in lines[0]


def test_volume_slices_pads_as_the_inverse_of_center_crop():
    rng = np.random.default_rng(0)
    kspace = (rng.standard_normal((2, 3, 40, 21)) + 1j * rng.standard_normal((2, 3, 40, 21))).astype(np.complex64)
    full = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(fastmri.data.transforms.to_tensor(kspace))), dim=1)
    padded = volume_slices(kspace, crop_size=32, image_size=32)
    assert padded.shape == (2, 32, 32)
    torch.testing.assert_close(center_crop(padded, (32, 21)), center_crop(full, (32, 21)).float(),
                               rtol=1e-5, atol=1e-6)
    assert not padded[..., :5].any() and not padded[..., -6:].any()  # 11 columns of padding: 5 left, 6 right


def _drop_patient_ids(files):
    for path in files:
        with h5py.File(path, "a") as fh:
            del fh.attrs["patient_id"]


def test_missing_patient_id_is_an_error_naming_the_file_and_the_fix(tmp_path, raw_dir):
    files = _copy_brain(raw_dir, tmp_path / "brain")
    _drop_patient_ids(files[:1])
    datasets = {"brain": {"role": "in_distribution", "paths": [str(tmp_path / "brain")]}}
    with pytest.raises(LdpmError) as err:
        build_index(datasets, [], tmp_path / "index.csv")
    message = str(err.value)
    assert str(files[0]) in message and "no patient_id" in message and "subject_from: filename" in message
    assert "\n" not in message and not (tmp_path / "index.csv").exists()


def test_subject_from_filename_makes_each_file_its_subject(tmp_path, raw_dir):
    from ldpm.config import validate_config

    files = _copy_brain(raw_dir, tmp_path / "brain")
    _drop_patient_ids(files)
    datasets = {"brain": {"role": "in_distribution", "paths": [str(tmp_path / "brain")],
                          "subject_from": "filename"}}
    index = build_index(datasets, [], tmp_path / "index.csv")
    assert list(index.patient_id) == [p.stem for p in files]
    # the config key that carries it (fastMRI rule index passes data.datasets through unchanged)
    cfg = validate_config({"data": {"datasets": {"brain": {"role": "in_distribution", "subject_from": "filename"},
                                                 "ood": {"role": "ood"}}}})
    assert cfg["data"]["datasets"]["brain"]["subject_from"] == "filename"
    with pytest.raises(LdpmError, match="data.datasets.brain.subject_from"):
        validate_config({"data": {"datasets": {"brain": {"role": "in_distribution", "subject_from": "scan"}}}})


def _write_knee(path, n_slices=4, seed=0):
    """A fastMRI multicoil knee file: CORPD_FBK, 15 coils, 640×368 k-space, recon 320², 3 T Skyra header.
    Only a central k-space block carries signal (gzip keeps the 113 MB array small on disk)."""
    from ldpm.data.ismrmrd import build_header

    rng = np.random.default_rng(seed)
    kspace = np.zeros((n_slices, 15, 640, 368), np.complex64)
    block = rng.standard_normal((2, n_slices, 15, 32, 32), dtype=np.float32)
    kspace[..., 304:336, 168:200] = block[0] + 1j * block[1]
    header = build_header(field_strength_T=2.89362, system_model="Skyra", system_vendor="SIEMENS",
                          encoded_shape=(640, 368), recon_shape=(320, 320), n_coils=15,
                          fov_mm=(140.0, 140.0), slice_thickness_mm=3.0, n_slices=n_slices,
                          protocol={"protocol_name": "CORPD_FBK"})
    with h5py.File(path, "w") as fh:
        fh.create_dataset("kspace", data=kspace, chunks=(1, 1, 640, 368), compression="gzip")
        fh["ismrmrd_header"] = np.bytes_(header.encode())
        fh.attrs["acquisition"] = "CORPD_FBK"
        fh.attrs["patient_id"] = f"knee{seed}"
    return kspace


def test_knee_volume_indexes_and_preprocesses_as_ood(tmp_path, raw_dir):
    (tmp_path / "knee").mkdir()
    kspace = _write_knee(tmp_path / "knee" / "file1000001.h5")
    datasets = {"brain": {"role": "in_distribution", "paths": [str(raw_dir / "brain")]},
                "knee": {"role": "ood", "paths": [str(tmp_path / "knee")]}}
    index = build_index(datasets, [], tmp_path / "index.csv")
    knee = index[index.dataset == "knee"].iloc[0]
    assert (knee.acquisition, knee.n_slices, knee.n_coils, knee.kspace_height, knee.kspace_width) == \
        ("CORPD_FBK", 4, 15, 640, 368)
    assert (knee.field_strength, knee.system_model, knee.patient_id) == (3.0, "Skyra", "knee0")
    preprocess(tmp_path / "index.csv", tmp_path / "out", crop_size=64, image_size=32, drop_last_slices=3,
               val_fraction=0.2, test_fraction=0.34, seed=0)
    test = pd.read_csv(tmp_path / "out" / "test.csv")
    rows = test[test.dataset == "knee"]
    assert list(rows.slice_id) == ["file1000001:000"] and (rows.acquisition == "CORPD_FBK").all()
    assert read_images(tmp_path / "out" / "test.h5")[rows.index].max() == pytest.approx(1.0, abs=1e-6)
    for s in ("train", "val"):
        assert "knee" not in set(pd.read_csv(tmp_path / "out" / f"{s}.csv").dataset)
    # at the real fastMRI crop: 640 readout rows cropped to 320, 368 columns to 320
    assert volume_slices(kspace[:1], crop_size=320, image_size=32).shape == (1, 32, 32)
