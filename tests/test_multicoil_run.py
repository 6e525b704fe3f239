"""The multicoil measurement end to end: the whole Snakefile on a small config with measurements [magnitude,
multicoil] (conftest.multicoil_run), and what adding a test folder of raw multi-coil files plans on it."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml
from test_workflow import planned_outputs

from ldpm.evaluate.tables import METHOD_LABELS

pytestmark = pytest.mark.slow  # a second end-to-end run (the default suite keeps one: test_pipeline)


def table1(run, measurement):
    return pd.read_csv(run / f"results/tables/table1_{measurement}_random_af8.csv", index_col=0)


def test_every_method_has_a_row_under_both_measurements(multicoil_run):
    cfg = yaml.safe_load((multicoil_run / "config.yaml").read_text())
    labels = [METHOD_LABELS[m] for m in cfg["methods"]]
    for measurement in ("magnitude", "multicoil"):
        table = table1(multicoil_run, measurement)
        assert list(table.index) == labels, measurement
        assert table["PSNR"].notna().all()
    assert "Measurement: multicoil" in (multicoil_run / "results/tables/table1_multicoil_random_af8.md").read_text()
    gap = pd.read_csv(multicoil_run / "results/tables/protocol_gap_random_af8.csv")
    assert list(gap.method.unique()) == cfg["methods"]
    page = (multicoil_run / "results/report.html").read_text()
    assert 'id="protocol_gap_random_af8"' in page


def test_a_multicoil_trained_unet_beats_multicoil_zero_filled(multicoil_run):
    """On 4 test volumes of 32² (AF 8: 4 of 32 lines), 0.45 dB and 0.07 SSIM when written (300 training steps)."""
    table = table1(multicoil_run, "multicoil")
    assert table.loc["U-Net", "PSNR"] > table.loc["Zero-Filled", "PSNR"]
    assert table.loc["U-Net", "SSIM"] > table.loc["Zero-Filled", "SSIM"] + 0.03


def test_multicoil_zero_filled_is_the_rss_of_the_masked_coil_images(multicoil_run):
    """The zero-filled row differs between the protocols (RSS of masked coil images vs |F⁻¹ of the masked magnitude
    k-space|) but scores against the same ground truth: same volumes, same subjects."""
    from ldpm.io import read_recon

    mag = read_recon(multicoil_run / "results/recon/zero_filled/seed0/magnitude_random_af8.h5")
    mc = read_recon(multicoil_run / "results/recon/zero_filled/seed0/multicoil_random_af8.h5")
    assert mag.shape == mc.shape and abs(mag - mc).max() > 1e-3
    volumes = {m: pd.read_csv(multicoil_run / f"results/metrics/zero_filled/seed0/{m}_random_af8_volumes.csv")
               for m in ("magnitude", "multicoil")}
    assert list(volumes["magnitude"].volume) == list(volumes["multicoil"].volume)
    assert set(volumes["multicoil"].measurement) == {"multicoil"}


def test_a_raw_multicoil_test_folder_is_scored_under_multicoil_without_retraining(multicoil_run, tmp_path):
    """A folder of fastMRI-format multi-coil files on the run's grid, added as a role: test dataset: the dry run
    plans its index, the new test file and every multicoil reconstruction, and no training job."""
    from ldpm.data.embedded import generate_dataset

    generate_dataset(tmp_path / "raw", n_subjects=1, volumes_per_subject=1, slices_per_volume=4, n_coils=2,
                     matrix=32, ood_subjects=0, seed=7)
    mine = tmp_path / "h5s"
    mine.mkdir()
    for i, src in enumerate(sorted((tmp_path / "raw" / "brain").glob("*.h5"))):
        shutil.copy(src, mine / f"mine_{i}.h5")
    extra = {"data": {"datasets": {"mine": {"role": "test", "paths": [str(mine)], "drop_last_slices": 0}}},
             "test_splits": {"mine": {"dataset": "mine"}}}
    (multicoil_run / "mine.yaml").write_text(yaml.safe_dump(extra))
    try:
        planned = planned_outputs(multicoil_run, "--configfile", "config.yaml", "mine.yaml", cwd=multicoil_run)
    finally:
        (multicoil_run / "mine.yaml").unlink()
    assert {"results/data/index/mine.csv", "results/data/test.h5", "results/recon/unet/seed0/multicoil_random_af8.h5",
            "results/recon/ldpm/seed0/multicoil_random_af8.h5", "results/tables/table3_multicoil_random_af8.csv"
            } <= planned
    assert not [p for p in planned if p.startswith(("results/models/", "results/ldpm/", "results/cs/"))]
