"""Masks follow fastMRI's RandomMaskFunc; metrics follow fastMRI's evaluation protocol."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO
from fastmri.data.subsample import RandomMaskFunc
from skimage.metrics import structural_similarity

from ldpm import LdpmError
from ldpm.cli import main
from ldpm.config import validate_config
from ldpm.data.masks import load_test_masks, make_test_masks, sample_mask
from ldpm.evaluate.metrics import evaluate
from ldpm.evaluate.tables import table1, table3
from ldpm.io import write_images


@pytest.mark.parametrize("af,cf", [(8, 0.04), (4, 0.08)])
def test_mask_statistics_match_random_mask_func(af, cf):
    width = 320
    masks = np.stack([sample_mask(width, af, cf, seed) for seed in range(400)])
    n_low = round(width * cf)
    centre = slice((width - n_low + 1) // 2, (width - n_low + 1) // 2 + n_low)
    assert masks[:, centre].all(), "the centre lines are always sampled"
    assert masks.sum(1).mean() == pytest.approx(width / af, rel=0.05), "expected lines = width / AF"
    direct, _ = RandomMaskFunc([cf], [af])((1, width, 1), seed=123)
    np.testing.assert_array_equal(sample_mask(width, af, cf, 123), direct.reshape(-1).numpy().astype(bool))


def test_test_masks_fixed_and_tied_to_slices(tmp_path):
    ids = [f"vol{i}:000" for i in range(5)]
    a = make_test_masks(ids, 64, 8, 0.04, seed=0, out=tmp_path / "a.npz")
    b = make_test_masks(ids, 64, 8, 0.04, seed=0, out=tmp_path / "b.npz")
    np.testing.assert_array_equal(a, b)
    assert not (a[0] == a[1]).all(), "each slice gets its own mask"
    assert load_test_masks(tmp_path / "a.npz", ids).shape == (5, 1, 1, 64)
    with pytest.raises(LdpmError, match="different test set"):
        load_test_masks(tmp_path / "a.npz", ids[::-1])
    with pytest.raises(LdpmError, match="must be > 1"):
        sample_mask(64, 1, 0.04, 0)


def _fake_test_set(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.random((6, 16, 16)).astype(np.float32)
    gt[3:] *= 0.3  # volume maxima ~1 and ~0.3: data_range = 1, a slice max or the volume max give other numbers
    pred = (gt + 0.05 * rng.standard_normal(gt.shape)).astype(np.float32)
    meta = pd.DataFrame({"slice_id": [f"v{i // 3}:{i % 3:03d}" for i in range(6)],
                         "volume": [f"v{i // 3}" for i in range(6)],
                         "dataset": "brain", "acquisition": ["AXT1"] * 3 + ["AXT2"] * 3, "field_strength": 3.0,
                         "system_model": "Skyra", "patient_id": ["p0"] * 3 + ["p1"] * 3})
    write_images(tmp_path / "test.h5", gt)
    meta.to_csv(tmp_path / "test.csv", index=False)
    make_test_masks(meta.slice_id.tolist(), 16, 4, 0.08, seed=0, out=tmp_path / "masks.npz")
    import h5py
    with h5py.File(tmp_path / "recon.h5", "w") as fh:
        fh["recon"] = pred
    return gt, pred


def test_metrics_follow_fastmri_protocol(tmp_path):
    gt, pred = _fake_test_set(tmp_path)
    vols = evaluate(tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "recon.h5", tmp_path / "masks.npz",
                    "unet", 8, tmp_path / "v.csv", tmp_path / "s.csv")
    for v, sl in zip(vols.itertuples(), [slice(0, 3), slice(3, 6)]):
        g, p = gt[sl].astype(np.float64), pred[sl].astype(np.float64)
        maxval = g.max()
        assert v.psnr == pytest.approx(10 * np.log10(maxval**2 / np.mean((g - p) ** 2)), rel=1e-5)
        assert v.nmse == pytest.approx(np.sum((g - p) ** 2) / np.sum(g**2), rel=1e-5)
        ssim = np.mean([structural_similarity(g[i], p[i], data_range=maxval) for i in range(3)])
        assert v.ssim == pytest.approx(ssim, rel=1e-4)
    slices = pd.read_csv(tmp_path / "s.csv")
    assert len(slices) == 6 and set(slices.method) == {"unet"}
    assert list(slices.slice_id) == [f"v{i // 3}:{i % 3:03d}" for i in range(6)]
    for i, row in enumerate(slices.itertuples()):  # per slice, data_range is still the volume's max
        maxval = gt[i // 3 * 3:i // 3 * 3 + 3].astype(np.float64).max()
        g, p = gt[i].astype(np.float64), pred[i].astype(np.float64)
        assert row.psnr == pytest.approx(10 * np.log10(maxval**2 / np.mean((g - p) ** 2)), rel=1e-5)
        assert row.ssim == pytest.approx(structural_similarity(g, p, data_range=maxval), rel=1e-4)
    assert gt[3:].max() < 0.31 < 0.99 < gt[:3].max()
    assert {"hfen", "kspace_residual"} <= set(vols.columns) & set(slices.columns)
    assert (vols.hfen > 0).all() and (vols.kspace_residual > 0).all()

    t1 = table1(vols, ["zero_filled", "unet"], {"dataset": "brain"}, 8, tmp_path / "table1")
    assert list(t1.index) == ["U-Net"], "methods that were not run are absent, not faked"
    assert t1.loc["U-Net", "PSNR"] == pytest.approx(vols.psnr.mean())
    assert (tmp_path / "table1.md").exists() and (tmp_path / "table1.tex").exists()


def test_table3_column_per_config_split(tmp_path):
    """Adding a split in config adds a column; no code change."""
    _fake_test_set(tmp_path)
    vols = evaluate(tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "recon.h5", tmp_path / "masks.npz",
                    "unet", 8, tmp_path / "v.csv", tmp_path / "s.csv")
    splits = {"all": {"dataset": "brain"}, "T2 only": {"acquisition": "AXT2"}, "Skyra": {"system_model": "Skyra"}}
    t3 = table3(vols, ["unet"], splits, 8, tmp_path / "table3")
    assert list(t3.columns) == ["all", "T2 only", "Skyra"]
    assert t3.loc["U-Net", "T2 only"] == pytest.approx(vols.loc[vols.acquisition == "AXT2", "psnr"].mean())
    with pytest.raises(LdpmError, match="test_splits.empty: the filter"):
        table3(vols, ["unet"], {"empty": {"acquisition": "AXFLAIR"}}, 8, tmp_path / "t")
    with pytest.raises(LdpmError, match="test_splits.bad.scanner: no such index column"):
        table3(vols, ["unet"], {"bad": {"scanner": "x"}}, 8, tmp_path / "t")


def test_table3_new_config_split_is_a_new_column_through_the_cli(tmp_path):
    """The path the tables rule takes: config.yaml → validated config → `ldpm tables --test-splits <json>`.
    A split appended in the config (here on a column no code mentions) becomes the last column of every format."""
    _fake_test_set(tmp_path)
    evaluate(tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "recon.h5", tmp_path / "masks.npz",
             "unet", 8, tmp_path / "v.csv", tmp_path / "s.csv")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["test_splits"] = {"all": {"dataset": "brain"}, "T1": {"dataset": "brain", "acquisition": "AXT1"}}
    columns = {}
    for extra in [{}, {"Skyra p1": {"system_model": "Skyra", "patient_id": "p1"}}]:
        config = validate_config(cfg | {"test_splits": cfg["test_splits"] | extra})
        out = tmp_path / f"tables{len(extra)}"
        assert main(["tables", "--metrics", str(tmp_path / "v.csv"), "--methods", json.dumps(config["methods"]),
                     "--test-splits", json.dumps(config["test_splits"]), "--main-split", config["main_split"],
                     "--acceleration", "8", "--out-dir", str(out)]) == 0
        columns[len(extra)] = list(pd.read_csv(out / "table3_magnitude_random_af8.csv", index_col=0).columns)
        for fmt in ["md", "tex"]:
            assert ("Skyra p1" in (out / f"table3_magnitude_random_af8.{fmt}").read_text()) == bool(extra)
    assert columns == {0: ["all", "T1"], 1: ["all", "T1", "Skyra p1"]}
    t3 = pd.read_csv(tmp_path / "tables1" / "table3_magnitude_random_af8.csv", index_col=0)
    assert t3.loc["U-Net", "Skyra p1"] == pytest.approx(pd.read_csv(tmp_path / "v.csv").psnr.iloc[1])


def test_equispaced_masks_and_the_real_acceleration_csv(tmp_path):
    """mask type equispaced: outside the centre block the sampled columns sit at one fixed spacing (counted here
    from the mask itself); the CSV's real AF is width / sampled columns per slice; an AF the mask function cannot
    reach at this width is refused with nothing written."""
    ids = [f"v:{i:03d}" for i in range(6)]
    masks = make_test_masks(ids, 320, 8, 0.04, 0, tmp_path / "eq.npz", mask_type="equispaced",
                            out_csv=tmp_path / "eq.csv")
    for m in masks:
        centre = np.zeros(320, bool)
        centre[160 - 6:160 - 6 + 13] = True  # round(320 * 0.04) = 13 centre columns
        outer = np.flatnonzero(m & ~centre)
        gaps = np.diff(outer[outer < 154])  # left of the centre block: EquispacedMaskFractionFunc's lattice
        assert len(gaps) > 3 and gaps.max() - gaps.min() <= 1
    real = pd.read_csv(tmp_path / "eq.csv")
    np.testing.assert_allclose(real.real_af, [320 / m.sum() for m in masks], rtol=1e-5)  # CSV keeps 6 digits
    assert list(real.slice_id) == ids and set(real.mask_type) == {"equispaced"}
    assert abs(real.real_af.mean() - 8) < 0.3
    random = make_test_masks(ids, 320, 8, 0.04, 0, tmp_path / "r.npz")
    assert not np.array_equal(random, masks)
    with pytest.raises(LdpmError, match="reach AF"):  # 16 columns: AF 12 leaves ~1 line besides the centre
        make_test_masks(ids, 16, 12, 0.3, 0, tmp_path / "bad.npz", out_csv=tmp_path / "bad.csv")
    assert not (tmp_path / "bad.npz").exists() and not (tmp_path / "bad.csv").exists()



def test_masks_per_slice_is_unchanged_and_per_volume_shares_one_mask_per_volume(tmp_path):
    """masks.per slice (the default) gives today's masks, seeded by (seed, AF, slice id), file for file; per volume
    every slice of a volume gets the one mask seeded by (seed, AF, volume) and volumes differ. The CLI takes the
    volumes from the test CSV; Table I's caption names the choice; the config reaches the masks and tables jobs."""
    from conftest import small_config, snakemake
    from ldpm.io import stable_seed

    vols = [f"file_brain_{v}" for v in range(6) for _ in range(3)]
    ids = [f"{v}:{i % 3:03d}" for i, v in enumerate(vols)]
    default = make_test_masks(ids, 320, 8, 0.04, 0, tmp_path / "d.npz", out_csv=tmp_path / "d.csv")
    today = np.stack([sample_mask(320, 8, 0.04, stable_seed(0, 8, sid)) for sid in ids])
    np.testing.assert_array_equal(default, today)
    make_test_masks(ids, 320, 8, 0.04, 0, tmp_path / "s.npz", out_csv=tmp_path / "s.csv", per="slice", volumes=vols)
    assert (tmp_path / "d.csv").read_bytes() == (tmp_path / "s.csv").read_bytes()
    with np.load(tmp_path / "d.npz") as a, np.load(tmp_path / "s.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)

    per_volume = make_test_masks(ids, 320, 8, 0.04, 0, tmp_path / "v.npz", per="volume", volumes=vols)
    for k in range(6):
        block = per_volume[3 * k:3 * k + 3]
        assert (block == block[0]).all(), "every slice of a volume has its volume's mask"
        np.testing.assert_array_equal(block[0], sample_mask(320, 8, 0.04, stable_seed(0, 8, vols[3 * k])))
    assert len({m.tobytes() for m in per_volume}) == 6, "each volume has its own mask"
    with pytest.raises(LdpmError, match="masks.per volume needs the volume of every test slice"):
        make_test_masks(ids, 320, 8, 0.04, 0, tmp_path / "x.npz", per="volume")

    write_images(tmp_path / "test.h5", np.zeros((len(ids), 4, 320), np.float32))
    pd.DataFrame({"slice_id": ids, "volume": vols}).to_csv(tmp_path / "test.csv", index=False)
    test_set = ["--test-h5", str(tmp_path / "test.h5"), "--test-csv", str(tmp_path / "test.csv")]
    assert main(["masks", *test_set, "--acceleration", "8", "--center-fraction", "0.04", "--per", "volume",
                 "--out", str(tmp_path / "cli.npz")]) == 0
    with np.load(tmp_path / "cli.npz") as f:
        np.testing.assert_array_equal(f["masks"], per_volume)

    _fake_test_set(tmp_path)
    metrics = evaluate(tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "recon.h5", tmp_path / "masks.npz",
                       "unet", 8, tmp_path / "vm.csv", tmp_path / "sm.csv")
    for per in ("slice", "volume"):
        table1(metrics, ["unet"], {}, 8, tmp_path / f"t1_{per}", mask_per=per)
        assert f"random masks (one per test {per};" in (tmp_path / f"t1_{per}.md").read_text().splitlines()[0]

    cfg = small_config()
    cfg["masks"]["per"] = "volume"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    planned = snakemake(tmp_path, "-n", "-p")
    assert planned.returncode == 0, planned.stderr[-2000:]
    commands = planned.stdout.splitlines()
    assert any(" masks " in c and "--per volume" in c for c in commands), planned.stdout[-3000:]
    assert any(" tables " in c and "--mask-per volume" in c for c in commands), planned.stdout[-3000:]
