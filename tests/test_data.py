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
from ldpm.data.preprocess import (assign_splits, build_index, nominal_field, plan_shards, preprocess,
                                  read_index_text, read_volume_info, shard_files, shard_rows_sha256, split_table,
                                  volume_slices)
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


# ------------------------------------------------------------------------------------- sharded preprocessing

PRE = dict(crop_size=64, image_size=32, drop_last_slices=3)
SPLIT = dict(val_fraction=0.2, test_fraction=0.34)


def _single_job_reference(index_csv, out_dir, *, crop_size, image_size, drop_last_slices, val_fraction,
                          test_fraction, seed):
    """The single-job `preprocess` as it was before the stage was sharded (commit 7b575ce, errors left out): the
    oracle the sharded stage must match bit for bit."""
    import contextlib

    index = pd.read_csv(index_csv)
    index["split"] = assign_splits(index, val_fraction, test_fraction, seed)
    tables = {s: [] for s in ("train", "val", "test")}
    with contextlib.ExitStack() as stack:
        files = {s: stack.enter_context(h5py.File(out_dir / f"{s}.h5", "w")) for s in tables}
        for f in files.values():
            f.create_dataset("images", shape=(0, image_size, image_size), maxshape=(None, image_size, image_size),
                             dtype=np.float32, chunks=(1, image_size, image_size))
        for vol in index.itertuples():
            keep = vol.n_slices - drop_last_slices
            with h5py.File(vol.path) as fh:
                kspace = fh["kspace"][:keep]
            images = volume_slices(kspace, crop_size, image_size)
            scale = float(images.max())
            dset = files[vol.split]["images"]
            start = dset.shape[0]
            dset.resize(start + keep, axis=0)
            dset[start:] = (images / scale).numpy()
            for s in range(keep):
                tables[vol.split].append({
                    "slice_id": f"{vol.volume}:{s:03d}", "volume": vol.volume, "slice": s, "dataset": vol.dataset,
                    "acquisition": vol.acquisition, "field_strength": vol.field_strength,
                    "system_model": vol.system_model, "patient_id": vol.patient_id, "norm_scale": scale})
    for s, rows in tables.items():
        pd.DataFrame(rows).to_csv(out_dir / f"{s}.csv", index=False, float_format="%.6g")


def _assert_same_split_files(expected, actual):
    for s in ("train", "val", "test"):
        assert (expected / f"{s}.csv").read_bytes() == (actual / f"{s}.csv").read_bytes(), s
        with h5py.File(expected / f"{s}.h5") as a, h5py.File(actual / f"{s}.h5") as b:
            ea, eb = a["images"], b["images"]
            assert (ea.shape, ea.dtype, ea.chunks, ea.maxshape) == (eb.shape, eb.dtype, eb.chunks, eb.maxshape), s
            assert np.array_equal(ea[()], eb[()]), s


def test_split_assignment_is_unchanged(prepared):
    """splits.csv assigns the subjects as the single-job stage did (values recorded from it, seed 0)."""
    table = split_table(pd.read_csv(prepared / "index.csv"), seed=0, **SPLIT)
    assert table.groupby("patient_id")["split"].agg(set).map(len).eq(1).all()
    assert table.groupby("patient_id")["split"].first().to_dict() == {
        "ood000": "test", "sub000": "train", "sub001": "train", "sub002": "test", "sub003": "test",
        "sub004": "train", "sub005": "val"}
    assert list(table.volume) == list(pd.read_csv(prepared / "index.csv").volume)  # index order


@pytest.mark.parametrize("shard_size", [1, 3, 100])
def test_sharded_stage_equals_the_single_job(prepared, tmp_path, shard_size):
    """Split files bit for bit equal to the single job's, whatever the shards (1 volume each, a few, one per
    dataset): per-volume normalisation inside the shards, index order restored by gather."""
    _single_job_reference(prepared / "index.csv", tmp_path, seed=0, **PRE, **SPLIT)
    out = tmp_path / "sharded"
    preprocess(prepared / "index.csv", out, seed=0, shard_size=shard_size, **PRE, **SPLIT)
    _assert_same_split_files(tmp_path, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{e}" for s in ("train", "val", "test")
                                                          for e in ("h5", "csv"))  # shards were temporary


def test_split_shard_gather_commands_equal_the_single_job(prepared, tmp_path, capsys):
    """The three sub-commands the workflow's rules run, one process per shard as Snakemake does."""
    import json

    from ldpm.cli import main

    index_csv = prepared / "index.csv"
    _single_job_reference(index_csv, tmp_path, seed=0, **PRE, **SPLIT)
    data = tmp_path / "data"
    assert main(["split", "--index", str(index_csv), "--params", json.dumps(SPLIT | {"shard_size": 4}),
                 "--seed", "0", "--out", str(data / "splits.csv")]) == 0
    splits = pd.read_csv(data / "splits.csv")
    text = read_index_text(index_csv)
    shards = splits.groupby("shard", sort=False)["volume"].agg(list)
    assert len(shards) > 2 and list(shards.index) == list(dict.fromkeys(splits.shard))
    dataset_of = dict(zip(splits.shard, splits.dataset))
    for shard, volumes in shards.items():
        h5, csv = shard_files(data / "shards", dataset_of[shard], shard)
        assert main(["preprocess-shard", "--index", str(index_csv), "--volumes", json.dumps(volumes),
                     "--rows-sha256", shard_rows_sha256(text, volumes), "--params", json.dumps(PRE),
                     "--out-h5", str(h5), "--out-csv", str(csv)]) == 0
    for split in ("train", "val", "test"):  # one job per split, as the workflow runs them
        assert main(["gather", "--splits", str(data / "splits.csv"), "--split", split, "--out-dir", str(data)]) == 0
    _assert_same_split_files(tmp_path, data)

    # a shard planned from other index rows than the index holds now, and a missing shard: one-line errors
    from test_reliability import run_cli

    volumes = shards.iloc[0]
    line = run_cli(capsys, "preprocess-shard", "--index", str(index_csv), "--volumes", json.dumps(volumes),
                   "--rows-sha256", "0" * 64, "--params", json.dumps(PRE), "--out-h5", str(tmp_path / "x.h5"),
                   "--out-csv", str(tmp_path / "x.csv"))
    assert "changed since the shard was planned" in line
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.csv").exists()
    shard_files(data / "shards", dataset_of[shards.index[-1]], shards.index[-1])[0].unlink()
    line = run_cli(capsys, "gather", "--splits", str(data / "splits.csv"), "--out-dir", str(tmp_path / "g"))
    assert f"shard {shards.index[-1]} missing" in line and not (tmp_path / "g").exists()


def _names(rng, n):
    return sorted({f"file_brain_AX{rng.integers(5)}_{rng.integers(200, 210)}_{rng.integers(6_000_000, 7_000_000)}"
                   for _ in range(n)})


def _plan(volumes, shard_size, dataset="brain"):
    index = pd.DataFrame({"volume": volumes, "dataset": dataset})
    return dict(index.groupby(plan_shards(index, shard_size).values, sort=False)["volume"].agg(tuple).items())


@pytest.mark.parametrize("shard_size", [4, 16])
def test_an_added_volume_changes_one_shard_and_leaves_the_others(shard_size):
    """Content-defined boundaries: a new raw file joins one shard (or starts one, taking the tail of its
    neighbour); every other shard keeps its name and its volumes, so Snakemake reruns nothing else. With
    fixed-size chunks of the sorted list, every shard after the new file would change."""
    rng = np.random.default_rng(0)
    volumes = _names(rng, 600)
    before = _plan(volumes, shard_size)
    sizes = [len(v) for v in before.values()]
    assert max(sizes) <= 2 * shard_size and 0.6 * shard_size < np.mean(sizes) < shard_size
    changed = []
    for new in _names(rng, 100):
        after = _plan(sorted(volumes + [new]), shard_size)
        changed.append(sum(before.get(name) != members for name, members in after.items()))
    assert max(changed) <= 3 and np.mean(changed) < 1.6
    # a new dataset starts its own shards and changes none of the others
    ood = _plan(["file_ood_1", "file_ood_2"], shard_size, "ood")
    index = pd.DataFrame({"volume": volumes + list(sum(ood.values(), ())),
                          "dataset": ["brain"] * len(volumes) + ["ood"] * 2})
    both = dict(index.groupby(plan_shards(index, shard_size).values, sort=False)["volume"].agg(tuple).items())
    assert both == before | ood


def test_workflow_reruns_only_the_shard_of_a_changed_or_added_raw_file(tmp_path, raw_dir):
    """Snakemake on fastMRI-source data: after the first run, a raw file edited in place, then a new one, each
    rerun the index, the split and gather but one shard job only, the one that holds the file."""
    import re

    import yaml
    from test_pipeline import small_config, snakemake

    for name in ("brain", "ood"):
        shutil.copytree(raw_dir / name, tmp_path / "raw" / name)
    cfg = small_config()
    cfg["data"].update(source="fastmri", shard_size=3, datasets={
        "brain": {"role": "in_distribution", "paths": [str(tmp_path / "raw" / "brain")]},
        "ood": {"role": "ood", "paths": [str(tmp_path / "raw" / "ood")]}})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    target = "results/data/train.h5"

    def run() -> list[str]:
        result = snakemake(tmp_path, target)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-3000:]
        return re.findall(r"wildcards: dataset=\S+, shard=(\S+)", out)

    def shard_of(volume: str) -> str:
        splits = pd.read_csv(tmp_path / "results/data/splits.csv")
        return splits.loc[splits.volume == volume, "shard"].item()

    first = run()
    assert len(first) == len(set(first)) > 3
    files = sorted((tmp_path / "raw" / "brain").glob("*.h5"))
    with h5py.File(files[5], "a") as fh:
        fh["kspace"][0, 0, 0, 0] += 1
    assert run() == [shard_of(files[5].stem)]
    added = files[7].with_name(files[7].stem + "0.h5")  # sorts right after files[7]: a volume of the same subject
    shutil.copy(files[7], added)
    assert run() == [shard_of(added.stem)]
    assert "Nothing to be done" in snakemake(tmp_path, "-n", target).stdout


def test_volume_names_that_read_as_numbers(tmp_path, raw_dir, capsys):
    """A file named 007.h5 is volume "007" for the shard plan (the workflow reads index.csv as text), and the shard
    jobs and gather still find it, though the split tables read the name as the number 7, as they always did."""
    import json

    from ldpm.cli import main

    for n, src in enumerate(sorted((raw_dir / "brain").glob("*.h5"))):
        (tmp_path / "brain").mkdir(exist_ok=True)
        shutil.copy(src, tmp_path / "brain" / f"{n:03d}.h5")
    build_index({"brain": {"role": "in_distribution", "paths": [str(tmp_path / "brain")]}}, [],
                tmp_path / "index.csv")
    text = read_index_text(tmp_path / "index.csv")
    plan = text.groupby(plan_shards(text, 2).to_numpy(), sort=False)["volume"].agg(list)
    assert "000" in plan.index
    data = tmp_path / "data"
    assert main(["split", "--index", str(tmp_path / "index.csv"), "--params", json.dumps(SPLIT | {"shard_size": 2}),
                 "--out", str(data / "splits.csv")]) == 0
    for shard, volumes in plan.items():
        h5, csv = shard_files(data / "shards", "brain", shard)
        assert main(["preprocess-shard", "--index", str(tmp_path / "index.csv"), "--volumes", json.dumps(volumes),
                     "--rows-sha256", shard_rows_sha256(text, volumes), "--params", json.dumps(PRE),
                     "--out-h5", str(h5), "--out-csv", str(csv)]) == 0
    assert main(["gather", "--splits", str(data / "splits.csv"), "--out-dir", str(data)]) == 0
    expected = tmp_path / "expected"
    expected.mkdir()
    _single_job_reference(tmp_path / "index.csv", expected, seed=0, **PRE, **SPLIT)
    _assert_same_split_files(expected, data)


def test_a_datasets_own_drop_last_slices_keeps_its_one_slice_volume(tmp_path, raw_dir):
    """data.datasets.<name>.drop_last_slices (dataset_drop): a test folder's one-slice volume keeps its slice with 0
    while a brain volume still drops its last 3; with the global setting alone the volume is refused, naming the
    per-dataset key."""
    from ldpm.data.preprocess import preprocess_shard

    one = tmp_path / "one"
    one.mkdir()
    src = sorted((raw_dir / "ood").glob("*.h5"))[0]
    shutil.copy(src, one / f"one_{src.name}")
    with h5py.File(one / f"one_{src.name}", "a") as fh:
        kspace = fh["kspace"][:1]
        del fh["kspace"]
        fh["kspace"] = kspace
    datasets = {"brain": {"role": "in_distribution", "paths": [str(raw_dir / "brain")]},
                "one": {"role": "test", "paths": [str(one)]}}
    index = build_index(datasets, [], tmp_path / "index.csv")
    volumes = [index.volume.iloc[0], f"one_{src.stem}"]
    preprocess_shard(tmp_path / "index.csv", volumes, tmp_path / "s.h5", tmp_path / "s.csv", dataset_drop={"one": 0},
                     **PRE)
    rows = pd.read_csv(tmp_path / "s.csv")
    assert rows.groupby("dataset").size().to_dict() == {"brain": index.n_slices.iloc[0] - 3, "one": 1}
    with pytest.raises(LdpmError, match=r"1 slices but data.drop_last_slices=3 drops them all.*"
                                        r"data.datasets.one.drop_last_slices"):
        preprocess_shard(tmp_path / "index.csv", volumes, tmp_path / "r.h5", tmp_path / "r.csv", **PRE)
    assert not (tmp_path / "r.h5").exists()


def test_test_fraction_zero_holds_out_no_in_distribution_subject(prepared):
    index = pd.read_csv(prepared / "index.csv")
    split = assign_splits(index, 0.2, 0.0, seed=0)
    in_dist = index.role == "in_distribution"
    assert set(split[in_dist]) == {"train", "val"} and set(split[~in_dist]) == {"test"}


def test_your_own_fastmri_folder_is_an_extra_test_dataset_of_the_embedded_default(tmp_path, raw_dir):
    """data.datasets.mine {role: test, paths, crop_size} beside the generated brain/ood: its files are indexed and
    preprocessed with their own crop into the test split only, and make a Table III column; as in_distribution it is
    refused (no retraining on it without data.source: fastmri)."""
    import yaml
    from conftest import small_config, snakemake

    from ldpm.config import validate_config

    mine = tmp_path / "mine"
    mine.mkdir()
    for src in sorted((raw_dir / "ood").glob("*.h5"))[:1]:  # another anatomy, 64-column matrix
        shutil.copy(src, mine / f"mine_{src.name}")
    cfg = small_config()
    cfg["data"]["datasets"]["mine"] = {"role": "test", "paths": [str(mine)], "crop_size": 48}
    cfg["test_splits"]["mine"] = {"dataset": "mine"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake(tmp_path, *(f"results/data/{split}.csv" for split in ("train", "val", "test")))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {split: pd.read_csv(tmp_path / f"results/data/{split}.csv") for split in ("train", "val", "test")}
    assert (rows["test"].dataset == "mine").sum() > 0
    assert not any((rows[s].dataset == "mine").any() for s in ("train", "val"))
    # the folder's own crop (48 of 64 columns), not data.crop_size (64): recomputed here from its k-space
    src = next(mine.glob("*.h5"))
    with h5py.File(src) as fh:
        kspace = fh["kspace"][:]
    expected = volume_slices(kspace, 48, 32).numpy()[: len(kspace) - 3]
    expected = expected / expected.max()
    images = read_images(tmp_path / "results/data/test.h5")[(rows["test"].dataset == "mine").to_numpy()]
    np.testing.assert_allclose(images, expected, atol=1e-5)
    with pytest.raises(LdpmError, match=r"data.datasets.mine.role: a folder added to the embedded default is test"):
        validate_config(cfg | {"data": cfg["data"] | {"datasets": cfg["data"]["datasets"]
                                                      | {"mine": {"role": "in_distribution", "paths": [str(mine)]}}}})


def test_the_embedded_default_can_reach_significance_on_its_test_split():
    """config.yaml's subjects and split fractions give at least 12 test subjects (the exact sign-flip test's smallest
    two-sided p, 2/2^n, is then <= 0.0005) and 4 validation subjects, with training subjects left."""
    import yaml

    from conftest import REPO

    data = yaml.safe_load((REPO / "config.yaml").read_text())["data"]
    subjects = data["embedded"]["n_subjects"]
    index = pd.DataFrame({"patient_id": np.repeat(np.arange(subjects), data["embedded"]["volumes_per_subject"]),
                          "role": "in_distribution"})
    split = assign_splits(index, data["split"]["val_fraction"], data["split"]["test_fraction"], seed=0)
    per_split = index.groupby(split.to_numpy())["patient_id"].nunique()
    assert per_split["test"] >= 12 and 2 / 2 ** per_split["test"] <= 0.0005
    assert per_split["val"] >= 4 and per_split["train"] >= 20
