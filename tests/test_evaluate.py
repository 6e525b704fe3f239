"""Evaluation beyond PSNR/SSIM/NMSE: perceptual metrics (real code path, small backbones), n/a without weights,
HFEN, k-space residual, statistics, Fig 2 layout, provenance records and `ldpm audit`."""

from __future__ import annotations

import html
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ldpm import LdpmError
from ldpm.cli import main
from ldpm.data.masks import make_test_masks
from ldpm.evaluate import perceptual as pc
from ldpm.evaluate.metrics import hfen, kspace_residuals, log_kernel
from ldpm.evaluate.stats import holm, paired_test, sign_flip_p, stats_table
from ldpm.evaluate.tables import table1
from ldpm.io import write_images

TINY = "ldpm-test-tiny"


def tiny_extractor_class():
    """A small conv net with fixed random weights, registered with torch-fidelity like any feature extractor."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    class Tiny(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            gen = torch.Generator().manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 16, 5, stride=2)
            self.conv.weight.data = torch.randn(self.conv.weight.shape, generator=gen) * 0.1
            self.conv.bias.data.zero_()

        @staticmethod
        def get_provided_features_list():
            return ("16",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "16"

        @staticmethod
        def can_be_compiled():
            return False

        def forward(self, x):
            return (torch.relu(self.conv(x.float() / 255)).mean(dim=(2, 3)),)

    if TINY not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(TINY, Tiny)
    return FEATURE_EXTRACTORS_REGISTRY[TINY]


def fake_test_set(tmp_path, n_subjects=4, n_volumes=2, n_slices=3, size=32, methods=("zero_filled", "unet", "ldpm")):
    """test.h5/csv, masks and one recon per method (noise levels differ) in tmp_path."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    rows, images = [], []
    for s in range(n_subjects):
        for v in range(n_volumes):
            vol = f"vol{s}{v}"
            for k in range(n_slices):
                blob = np.exp(-((yy - 0.5) ** 2 + (xx - 0.4 - 0.05 * k) ** 2) / 0.05)
                images.append(blob * (0.8 + 0.2 * rng.random()) + 0.05 * rng.random((size, size)))
                rows.append({"slice_id": f"{vol}:{k:03d}", "volume": vol, "slice": k, "dataset": "brain",
                             "acquisition": ["AXT1", "AXT2"][v % 2], "field_strength": [1.5, 3.0][s % 2],
                             "system_model": "Skyra", "patient_id": f"p{s}"})
    gt = np.stack(images).astype(np.float32)
    gt /= gt.max()
    meta = pd.DataFrame(rows)
    write_images(tmp_path / "test.h5", gt)
    meta.to_csv(tmp_path / "test.csv", index=False)
    make_test_masks(meta.slice_id.tolist(), size, 4, 0.08, seed=0, out=tmp_path / "masks.npz")
    recons = {}
    for i, m in enumerate(methods):
        pred = gt + (0.08 - 0.03 * i) * rng.standard_normal(gt.shape)
        recons[m] = tmp_path / f"{m}.h5"
        with h5py.File(recons[m], "w") as fh:
            fh["recon"] = pred.astype(np.float32)
    return gt, meta, recons


# ---------------------------------------------------------------------------------------------- perceptual

def test_fid_kid_path_equals_torch_fidelity_with_a_registered_extractor(tmp_path):
    import torch_fidelity

    tiny_extractor_class()
    extractor = pc.build_extractor(TINY)
    gt, _, _ = fake_test_set(tmp_path)
    rng = np.random.default_rng(1)
    noisy = np.clip(gt + 0.2 * rng.standard_normal(gt.shape), 0, 1)
    real, fake = pc.extract_features(extractor, gt), pc.extract_features(extractor, noisy)
    ours = pc.fid_kid(real, fake, kid_subsets=20, kid_subset_size=10, seed=0)

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = pc.to_uint8_rgb(x)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    ref = torch_fidelity.calculate_metrics(input1=Images(gt), input2=Images(noisy), fid=True, kid=True,
                                           feature_extractor=TINY, kid_subsets=20, kid_subset_size=10, rng_seed=0,
                                           cuda=False, cache=False, verbose=False, save_cpu_ram=True)
    assert ours["rfid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-5)
    assert ours["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-5, abs=1e-9)
    same = pc.fid_kid(real, real, kid_subsets=20, kid_subset_size=10)
    assert abs(same["rfid"]) < 1e-3 and ours["rfid"] > 100 * abs(same["rfid"])


def test_kid_subsets_are_smaller_than_a_small_set_so_kid_std_means_something():
    """With N below the configured subset size, subsets of all N images would all be the same set: their std is
    float32 rounding noise (~1e-7 here), not a spread over subsets."""
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(20, 8, generator=gen), torch.randn(20, 8, generator=gen) + 0.5
    out = pc.fid_kid(real, fake, kid_subsets=50, kid_subset_size=1000, seed=0)
    assert out["kid_std"] > 0.05 * out["kid"] > 0
    assert np.isnan(pc.fid_kid(real[:2], fake[:2], kid_subsets=5)["kid_std"]), "N = 2: no smaller subset exists"


def _lpips_by_hand(trunk_state, linear_state, x, y):
    """LPIPS written out: AlexNet ReLU outputs, channel-normalised, squared difference, linear heads, mean."""
    import torchvision

    alex = torchvision.models.alexnet().features
    alex.load_state_dict({k.split(".", 1)[1]: v for k, v in trunk_state.items()})
    shift = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
    scale = torch.tensor([.458, .448, .450])[None, :, None, None]
    fx, fy, total = (x - shift) / scale, (y - shift) / scale, 0.0
    for layer, taps in zip(range(5), [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]):
        for i in range(*taps):
            fx, fy = alex[i](fx), alex[i](fy)
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = linear_state[f"lin{layer}.model.1.weight"]
        total = total + torch.nn.functional.conv2d((nx - ny) ** 2, w).mean(dim=(2, 3))
    return total.reshape(-1)


def test_lpips_uses_the_local_trunk_and_the_wheel_heads(tmp_path):
    import lpips
    import torchvision

    torch.manual_seed(0)  # random but fixed trunk: the wiring is what is tested, not ImageNet weights
    trunk = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    torch.save(trunk, tmp_path / "alexnet.pth")
    net = pc.build_lpips(tmp_path / "alexnet.pth")
    torch.testing.assert_close(net.net.slice1[0].weight, trunk["features.0.weight"])
    linear = torch.load(f"{lpips.__path__[0]}/weights/v0.1/alex.pth", map_location="cpu", weights_only=True)

    gt, _, _ = fake_test_set(tmp_path)
    gt = gt[:6]
    pred = np.clip(gt + 0.1 * np.random.default_rng(0).standard_normal(gt.shape), 0, 1).astype(np.float32)
    ours = pc.lpips_per_image(net, gt, pred, batch_size=4)
    as3 = [torch.from_numpy(v)[:, None].expand(-1, 3, -1, -1) * 2 - 1 for v in (gt, pred)]
    with torch.no_grad():
        expected = _lpips_by_hand(trunk, linear, *as3).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4)
    assert np.all(pc.lpips_per_image(net, gt, gt) < 1e-6)

    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(LdpmError, match="bad.pth: not torchvision AlexNet weights"):
        pc.build_lpips(tmp_path / "bad.pth")


def test_perceptual_table_through_the_real_path(tmp_path):
    tiny_extractor_class()
    torch.manual_seed(0)
    import torchvision

    torch.save({k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")},
               tmp_path / "alexnet.pth")
    backbones = pc.Backbones(lpips=pc.build_lpips(tmp_path / "alexnet.pth"), extractor=pc.build_extractor(TINY))
    _, _, recons = fake_test_set(tmp_path)
    out = pc.perceptual_metrics(tmp_path / "test.h5", tmp_path / "test.csv", recons, {"acquisition": "AXT1"},
                                backbones, tmp_path / "perceptual.csv", kid_subsets=10)
    assert (out.n_images == 12).all() and out[["lpips", "rfid", "kid"]].notna().all().all()
    # less noise -> closer to the ground truth in both metrics (noise falls from zero_filled to ldpm)
    assert out.lpips.is_monotonic_decreasing and out.rfid.is_monotonic_decreasing


def test_missing_weights_give_na_cells_and_a_footnote(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    backbones = pc.load_backbones(tmp_path / "weights")
    assert backbones.lpips is None and backbones.extractor is None
    _, _, recons = fake_test_set(tmp_path)
    perceptual = pc.perceptual_metrics(tmp_path / "test.h5", tmp_path / "test.csv", recons, {}, backbones,
                                       tmp_path / "perceptual.csv")
    assert perceptual[["lpips", "rfid", "kid"]].isna().all().all()
    volumes = pd.DataFrame({"method": ["unet", "ldpm"], "psnr": [30.0, 31.0], "ssim": [.8, .9], "nmse": [.02, .01],
                            "acceleration": 8, "dataset": "brain", "volume": "v"})
    table1(volumes, ["unet", "ldpm"], {"dataset": "brain"}, 8, tmp_path / "table1", perceptual,
           ["unet: official weights"])
    csv = pd.read_csv(tmp_path / "table1.csv", index_col=0, keep_default_na=False)
    assert (csv[["LPIPS", "rFID", "KID"]] == "n/a").all().all() and float(csv.loc["U-Net", "PSNR"]) == 30
    md = (tmp_path / "table1.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| U-Net"))
    assert [c.strip() for c in row.split("|")[5:8]] == ["n/a", "n/a", "n/a"]
    assert "LPIPS n/a: alexnet-owt-7be5be79.pth not found in" in md
    assert "rFID and KID n/a: weights-inception-2015-12-05-6726825d.pth not found" in md
    assert "ldpm weights fetch --dir" in md and "n/a" in (tmp_path / "table1.tex").read_text()
    assert "\n[3] unet: official weights\n" in md  # config caveats numbered after the perceptual footnotes


def test_a_weights_file_with_the_wrong_hash_is_an_error_not_a_number(tmp_path):
    (tmp_path / "alexnet-owt-7be5be79.pth").write_bytes(b"not the weights")
    with pytest.raises(LdpmError, match="alexnet-owt-7be5be79.pth: sha256 .* is not the pinned 7be5be79"):
        pc.load_backbones(tmp_path, use_hub_cache=False)


def test_weights_fetch_checks_the_pinned_sha256(tmp_path, monkeypatch):
    import hashlib

    source = tmp_path / "served.pth"
    source.write_bytes(b"weights")
    good = pc.WeightFile(("w.pth",), source.as_uri(), hashlib.sha256(b"weights").hexdigest(), "LPIPS")
    monkeypatch.setattr(pc, "WEIGHTS", {"w": good})
    assert pc.fetch_weights(tmp_path / "weights") == [tmp_path / "weights" / "w.pth"]
    monkeypatch.setattr(pc, "WEIGHTS", {"w": pc.WeightFile(("x.pth",), source.as_uri(), "0" * 64, "LPIPS")})
    with pytest.raises(LdpmError, match="downloaded sha256 .* is not the pinned"):
        pc.fetch_weights(tmp_path / "weights")
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["w.pth"], "nothing half-fetched is kept"


# ------------------------------------------------------------------------------------------ HFEN, k-space

def test_hfen_kernel_and_definition():
    k = log_kernel(15, 1.5)
    assert k.shape == (15, 15) and abs(k.sum()) < 1e-12 and k[7, 7] == k.min() < 0
    np.testing.assert_allclose(k, k.T)
    gt = np.random.default_rng(0).random((2, 32, 32))
    assert hfen(gt, gt) == 0
    assert hfen(gt, 1.5 * gt) == pytest.approx(0.5)  # the LoG is linear: ‖0.5·LoG(gt)‖ / ‖LoG(gt)‖
    assert hfen(gt, gt + 0.3) == pytest.approx(0, abs=1e-9), "a constant offset has no high frequencies"


def test_kspace_residual_on_sampled_lines():
    gt = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    masks = torch.zeros(3, 1, 1, 16)
    masks[..., ::4] = 1
    res, energy = kspace_residuals(gt, gt, masks)
    assert np.all(res < 1e-8 * energy)
    res, energy = kspace_residuals(gt, 1.1 * gt, masks)
    np.testing.assert_allclose(np.sqrt(res / energy), 0.1, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- statistics

def _volumes(methods=("unet", "ldpm")):
    rng = np.random.default_rng(0)
    rows = []
    for s in range(6):
        for v in range(2):
            base = 28 + rng.normal()
            for m in methods:
                rows.append({"method": m, "volume": f"v{s}{v}", "patient_id": f"p{s}", "dataset": "brain",
                             "acceleration": 8, "psnr": base + (1.0 + 0.3 * rng.normal() if m == "ldpm" else 0),
                             "ssim": 0.8 + 0.01 * rng.normal()})
    return pd.DataFrame(rows)


def _pairs(diffs: dict, metric="psnr", others=("unet",)) -> pd.DataFrame:
    """Volume rows where ldpm − method = the given difference, keyed by (subject, volume[, method])."""
    rows = []
    for key, d in diffs.items():
        subject, volume, *method = key
        for m in method or others:
            rows += [{"method": "ldpm", "patient_id": subject, "volume": volume, metric: 30.0},
                     {"method": m, "patient_id": subject, "volume": volume, metric: 30.0 - d}]
    frame = pd.DataFrame(rows).groupby(["method", "patient_id", "volume"], as_index=False).first()
    return frame.assign(dataset="brain", acceleration=8)


def test_paired_test_is_an_exact_sign_flip_test_over_subjects():
    # 3 subjects, all differences positive: of the 2^3 sign flips only all-plus and all-minus are as extreme
    t = paired_test(_pairs({("p0", "a"): 1, ("p1", "b"): 2, ("p2", "c"): 3}), "psnr", "ldpm", "unet")
    assert t["p"] == pytest.approx(2 / 8) and t["n_subjects"] == 3
    # p0's two volumes (differences 0.5 and 1.5) are one pair with difference 1: the same test, not 4 pairs
    t = paired_test(_pairs({("p0", "a"): .5, ("p0", "a2"): 1.5, ("p1", "b"): 2, ("p2", "c"): 3}), "psnr", "ldpm",
                    "unet")
    assert t["p"] == pytest.approx(2 / 8) and t["n_subjects"] == 3
    assert t["mean_diff"] == pytest.approx(2) and t["median_diff"] == pytest.approx(2)
    # differences (3, 1, -1, 2): |sum| = 5 of at most 7; flipping a set F gives |7 - 2 sum|F|| >= 5 iff
    # sum|F| <= 1 or >= 6: F = {}, {1}, {-1} and their complements, 6 of 16 flips
    t = paired_test(_pairs({("p0", "a"): 3, ("p1", "b"): 1, ("p2", "c"): -1, ("p3", "d"): 2}), "psnr", "ldpm",
                    "unet")
    assert t["p"] == pytest.approx(6 / 16) and t["mean_diff"] == pytest.approx(1.25)
    assert t["median_diff"] == pytest.approx(1.5)


def test_sign_flip_monte_carlo_above_16_subjects_matches_enumeration():
    import itertools

    diff = np.random.default_rng(3).normal(0.6, 1.0, size=17)
    sums = np.abs([np.dot(signs, diff) for signs in itertools.product([-1, 1], repeat=17)])
    exact = np.mean(sums >= abs(diff.sum()) - 1e-9)
    assert 0.02 < exact < 0.5  # a case with a p that Monte-Carlo error can be seen against
    assert sign_flip_p(diff, n_draws=20_000, seed=0) == pytest.approx(exact, abs=0.01)
    assert sign_flip_p(np.ones(20), n_draws=1000) == pytest.approx(1 / 1001), "never 0: the observed flip counts"


def test_bootstrap_resamples_subjects_and_the_paired_test_pairs_subjects(tmp_path):
    vols = _volumes()
    table = stats_table(vols, ["unet", "ldpm"], {"dataset": "brain"}, 8, tmp_path / "stats", n_boot=500)
    row = table[(table.method == "unet") & (table.metric == "psnr")].iloc[0]
    assert row.ci_low < row["mean"] < row.ci_high and row.subjects == 6 and row.volumes == 12
    per_subject = vols.groupby(["patient_id", "method"]).psnr.mean().unstack()
    diff = per_subject.ldpm - per_subject.unet
    assert (diff > 0).all(), "the fixture: LDPM better on every subject"
    assert row.p == pytest.approx(2 / 2 ** 6) and row.n_subjects == 6  # only all-plus / all-minus as extreme
    assert row.median_diff_vs_ref == pytest.approx(diff.median()) and row.mean_diff_vs_ref == pytest.approx(diff.mean())
    # Copying every volume (same subjects) changes neither the subject-level CI nor the test; volume-level ones would
    doubled = pd.concat([vols, vols.assign(volume=vols.volume + "b")])
    again = stats_table(doubled, ["unet", "ldpm"], {"dataset": "brain"}, 8, tmp_path / "s2", n_boot=500)
    row2 = again[(again.method == "unet") & (again.metric == "psnr")].iloc[0]
    assert (row2.ci_low, row2.ci_high) == pytest.approx((row.ci_low, row.ci_high))
    assert row2.p == pytest.approx(row.p) and row2.n_subjects == 6
    md = (tmp_path / "stats.md").read_text()
    assert "sign-flip permutation tests by subject" in md and "smallest two-sided p this test can give is 0.03125" in md


def test_holm_runs_over_every_method_and_metric_of_the_table(tmp_path):
    """4 subjects; per-subject differences chosen so the exact sign-flip p-values are known by hand."""
    diffs = {"psnr": {"unet": [1, 2, 3, 4], "zero_filled": [4, 3, 2, 1]},  # all positive: p = 2/16 = 0.125
             "ssim": {"unet": [.03, .01, -.01, .02],  # 6 of 16 flips as extreme (see the test above): p = 0.375
                      "zero_filled": [.01, -.01, .02, -.02]}}  # mean 0: every flip as extreme, p = 1
    frames = [_pairs({(f"p{i}", f"v{i}", m): d for m, ds in by_method.items() for i, d in enumerate(ds)}, metric)
              for metric, by_method in diffs.items()]
    vols = frames[0].merge(frames[1], on=["method", "patient_id", "volume", "dataset", "acceleration"])
    table = stats_table(vols, ["zero_filled", "unet", "ldpm"], {}, 8, tmp_path / "stats", n_boot=50)
    tests = table[table.method != "ldpm"].set_index(["method", "metric"])
    p = {("unet", "psnr"): .125, ("zero_filled", "psnr"): .125, ("unet", "ssim"): .375, ("zero_filled", "ssim"): 1}
    assert tests.p.to_dict() == pytest.approx(p)
    # Holm over the 4 tests: sorted .125, .125, .375, 1 -> 4*.125 = .5, max(.5, 3*.125) = .5, 2*.375 = .75, 1.
    # Per metric it would be .25, .25 (PSNR) and .75, 1 (SSIM).
    assert tests.p_holm.to_dict() == pytest.approx({("unet", "psnr"): .5, ("zero_filled", "psnr"): .5,
                                                    ("unet", "ssim"): .75, ("zero_filled", "ssim"): 1})
    md = (tmp_path / "stats.md").read_text()
    assert "Holm over 2 methods × 2 metrics = 4 tests" in md
    assert "smallest two-sided p this test can give is 0.125, so it cannot reach p < 0.05" in md
    assert "about the population" in md and "these 4 subjects" in md


def test_without_ldpm_the_tests_are_skipped_not_faked(tmp_path):
    vols = _volumes(methods=("zero_filled", "unet"))
    table = stats_table(vols, ["zero_filled", "unet", "ldpm"], {}, 8, tmp_path / "stats", n_boot=200)
    assert table.p.isna().all() and table.note.str.contains("skipped: no metrics for method 'ldpm'").all()
    assert "skipped, no metrics for method 'ldpm'" in (tmp_path / "stats.md").read_text()


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, np.nan])[1]) and holm([0.01, np.nan])[0] == pytest.approx(0.01)


# -------------------------------------------------------------------------------------------------- Fig 2

def test_figure2_layout(tmp_path):
    from ldpm.evaluate.figures import figure2

    _, meta, recons = fake_test_set(tmp_path)
    titles = figure2(tmp_path / "test.h5", tmp_path / "test.csv", recons, tmp_path / "fig.png",
                     zero_filled=recons["zero_filled"], split_filter={"dataset": "brain"})
    assert len(titles) == 4, "two example sets, two rows each"
    assert titles[0][0].startswith("A1 GT") and titles[2][0].startswith("B1 GT")
    assert [t.split("\n")[0] for t in titles[0][1:]] == ["A2 U-Net", "A3 LDPM (Ours)"]
    assert titles[1][0].startswith("Zero-filled") and titles[1][1:] == ["error U-Net", "error LDPM (Ours)"]
    assert (tmp_path / "fig.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------------ provenance and audit

def test_every_stage_writes_a_record_and_audit_follows_the_chain(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LDPM_CONFIG_SHA256", "c0ffee")
    fake_test_set(tmp_path)
    masks = ["--test-h5", "test.h5", "--test-csv", "test.csv"]
    assert main(["masks", *masks, "--acceleration", "4", "--center-fraction", "0.08", "--out", "af4.npz"]) == 0
    assert main(["reconstruct", "zero_filled", *masks, "--masks", "af4.npz", "--out", "zf.h5"]) == 0
    assert main(["metrics", *masks, "--recon", "zf.h5", "--masks", "af4.npz", "--method", "zero_filled",
                 "--acceleration", "4", "--out-volumes", "m/v.csv", "--out-slices", "m/s.csv"]) == 0
    assert main(["tables", "--metrics", "m/v.csv", "--methods", '["zero_filled"]', "--test-splits",
                 '{"all": {"dataset": "brain"}}', "--main-split", "all", "--acceleration", "4",
                 "--recon", "zf.h5", "--out-dir", "tables"]) == 0
    cost = pd.read_csv(tmp_path / "tables" / "compute_magnitude_random_af4.csv", index_col=0)
    assert list(cost.index) == ["Zero-Filled"] and cost.loc["Zero-Filled", "device"] == "cpu"
    assert cost.loc["Zero-Filled", "GFLOPs/slice"] == 0 and cost.loc["Zero-Filled", "peak RSS (GiB)"] > 0.1
    from ldpm.provenance import record_path

    rec = json.loads(record_path("zf.h5").read_text())
    assert rec["stage"] == "reconstruct" and rec["seed"] == 0 and rec["config_sha256"] == "c0ffee"
    assert set(rec["git"]) >= {"commit", "dirty"} and rec["device"]["torch"] == torch.__version__
    assert rec["device"]["cuda"] in (True, False) and rec["wall_seconds"] >= 0
    from ldpm.io import sha256_file

    inputs = {i["path"]: i["sha256"] for i in rec["inputs"]}
    assert inputs == {p: sha256_file(p) for p in ["test.h5", "test.csv", "af4.npz"]}
    assert rec["sha256"] == sha256_file("zf.h5")
    for out in ["tables/table1_magnitude_random_af4.csv", "tables/table1_magnitude_random_af4.md", "tables/table3_magnitude_random_af4.tex",
                "m/s.csv"]:
        assert record_path(out).exists(), out

    assert main(["audit", "tables/table1_magnitude_random_af4.csv"]) == 0
    text = capsys.readouterr().out
    order = [text.index(s) for s in ["tables/table1_magnitude_random_af4.csv", "m/v.csv", "test.h5", "zf.h5", "af4.npz"]]
    assert order == sorted(order) and "CHANGED" not in text and "ldpm reconstruct" in text
    # a changed input shows up in the chain
    with h5py.File("zf.h5", "a") as fh:
        fh["recon"][0] += 1
    assert main(["audit", "tables/table1_magnitude_random_af4.csv"]) == 0
    assert "zf.h5  [CHANGED (recorded" in capsys.readouterr().out
    assert main(["audit", "nothing.csv"]) == 2


def test_records_live_in_their_own_tree_never_beside_outputs_or_inputs(tmp_path, monkeypatch, capsys):
    """Outputs under results/ get results/provenance/records/<path inside results>.json; nothing lands beside an
    output or in an input directory, and audit follows the chain from any working directory."""
    from ldpm.provenance import record_path

    data = tmp_path / "raw"  # inputs outside the results tree (like fastMRI on a read-only disk)
    data.mkdir()
    fake_test_set(data, methods=())
    before = sorted(data.rglob("*"))
    monkeypatch.chdir(tmp_path)
    masks = ["--test-h5", "raw/test.h5", "--test-csv", "raw/test.csv"]
    assert main(["masks", *masks, "--acceleration", "4", "--center-fraction", "0.08",
                 "--out", "results/masks/af4.npz"]) == 0
    assert main(["reconstruct", "zero_filled", *masks, "--masks", "results/masks/af4.npz",
                 "--out", "results/recon/zf/af4.h5"]) == 0
    assert main(["metrics", *masks, "--recon", "results/recon/zf/af4.h5", "--masks", "results/masks/af4.npz",
                 "--method", "zero_filled", "--acceleration", "4", "--out-volumes", "results/metrics/v.csv",
                 "--out-slices", "results/metrics/s.csv"]) == 0
    records = tmp_path / "results" / "provenance" / "records"
    assert sorted(p.relative_to(records).as_posix() for p in records.rglob("*.json")) == \
        ["masks/af4.npz.json", "metrics/s.csv.json", "metrics/v.csv.json", "recon/zf/af4.h5.json"]
    assert record_path(tmp_path / "results/recon/zf/af4.h5") == records / "recon/zf/af4.h5.json"
    rec = json.loads((records / "recon/zf/af4.h5.json").read_text())
    assert rec["output"] == "results/recon/zf/af4.h5" and rec["stage"] == "reconstruct"
    # no twin beside any output, nothing written into the input directory
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and records not in p.parents]
    assert not [p for p in outside if p.name.endswith((".json", ".prov.json"))], outside
    assert sorted(data.rglob("*")) == before
    # audit from another directory, by absolute path, still reaches the inputs and their sha256
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["audit", str(tmp_path / "results/metrics/v.csv")]) == 0
    text = capsys.readouterr().out
    assert "ldpm metrics" in text and "ldpm reconstruct" in text and "ldpm masks" in text
    assert "raw/test.h5" in text and "(no provenance record: a raw or external file)" in text
    assert "CHANGED" not in text and "MISSING" not in text and not list(elsewhere.iterdir())


def test_inception_is_built_from_the_local_file_loaded_weights_only(tmp_path):
    """The production rFID/KID extractor, with a random-but-fixed state dict saved as the local weights file."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with mock.patch.object(fe, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict"):  # a random net to save
        state = fe.FeatureExtractorInceptionV3(pc.INCEPTION, ["2048"]).state_dict()
    torch.save(state, tmp_path / "inception.pth")
    with mock.patch("torch.load", wraps=torch.load) as load:
        extractor = pc.build_extractor(pc.INCEPTION, tmp_path / "inception.pth")
    assert all(call.kwargs.get("weights_only") is True for call in load.call_args_list) and load.call_count == 1
    torch.testing.assert_close(extractor.fc.weight, state["fc.weight"])
    feats = pc.extract_features(extractor, np.random.default_rng(0).random((2, 32, 32)))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


def test_reconstruct_records_the_flops_of_one_slice_and_the_compute_table_reads_them(tmp_path):
    """The cost attrs of a U-Net reconstruction: FLOPs per slice equal a separate count of one forward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    from ldpm.baselines.unet import build_unet
    from ldpm.evaluate.tables import compute_table
    from ldpm.reconstruct import reconstruct
    from ldpm.weights import save_weights

    fake_test_set(tmp_path)
    hp = {"chans": 4, "num_pool_layers": 2}
    model = build_unet(hp).eval()
    save_weights(model, tmp_path / "unet.safetensors")
    reconstruct("unet", tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "masks.npz", tmp_path / "u.h5",
                weights={"model": str(tmp_path / "unet.safetensors")}, hp=hp, batch_size=4, device="cpu")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 1, 32, 32))
    with h5py.File(tmp_path / "u.h5") as fh:
        assert fh.attrs["gflops_per_slice"] * 1e9 == pytest.approx(counter.get_total_flops(), rel=1e-9)
        assert fh.attrs["seconds_per_slice"] > 0 and np.isnan(fh.attrs["peak_gpu_gib"])
    table = compute_table([tmp_path / "u.h5"], ["zero_filled", "unet"], 4, tmp_path / "compute")
    assert list(table.index) == ["U-Net"] and table.loc["U-Net", "GFLOPs/slice"] > 0
    assert "n/a" in (tmp_path / "compute.md").read_text()


def test_html_report_renders_tables_with_captions_notes_and_inlined_figures(tmp_path):
    from ldpm.evaluate.report import write_report
    from ldpm.evaluate.tables import write_table_formats

    table = pd.DataFrame({"PSNR": [30.12346, 31.0], "LPIPS": [np.nan, 0.1]}, index=["U-Net", "LDPM (Ours)"])
    write_table_formats(table, tmp_path / "t1", "Table I: caption <AF 8>", ["[1] LPIPS n/a: file missing"])
    png = tmp_path / "fig.png"
    import matplotlib.pyplot as plt

    plt.imsave(png, np.eye(8))
    (tmp_path / "audit.txt").write_text("results/tables/t1.csv <- metrics")
    write_report([tmp_path / "t1.md"], [png], [tmp_path / "audit.txt"], tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "<caption>Table I: caption &lt;AF 8&gt;</caption>" in page
    assert "<td>30.1235</td>" in page and "<td>n/a</td>" in page and "[1] LPIPS n/a: file missing" in page
    assert "data:image/png;base64," in page and "results/tables/t1.csv &lt;- metrics" in page
    assert page.count("<tr>") == 3  # header + two rows; the md separator line is not a row


def test_report_data_section_counts_subjects_and_puts_ood_beside_the_main_split(tmp_path):
    from ldpm.evaluate.report import EMBEDDED_LIMITS, data_section

    rows = [{"slice_id": f"v{s}{v}:{k}", "volume": f"v{s}{v}", "patient_id": f"p{s}", "dataset": "brain"}
            for s in range(3) for v in range(2) for k in range(4)]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    ood = [{"slice_id": f"o:{k}", "volume": "o", "patient_id": "q", "dataset": "ood"} for k in range(5)]
    pd.DataFrame(rows[:8] + ood).to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"all": [20.0, 25.0], "T1": [1.0, 2.0], "OOD": [15.0, 17.5]},
                 index=["Zero-filled", "U-Net"]).to_csv(tmp_path / "table3.csv")
    page = data_section([tmp_path / "train.csv", tmp_path / "test.csv"], "embedded", [tmp_path / "table3.csv"],
                        "all", ["OOD"])
    cells = " ".join(page.split())  # one space between tags
    for split, dataset, subjects, volumes, slices in [("train", "brain", 3, 6, 24), ("test", "ood", 1, 1, 5)]:
        assert f"<td>{split}</td> <td>{dataset}</td> <td>{subjects}</td> <td>{volumes}</td> <td>{slices}</td>" in cells
    assert "<th>all</th> <th>OOD</th>" in cells and "<th>T1</th>" not in cells
    assert "<th>U-Net</th> <td>25.00</td> <td>17.50</td>" in cells
    assert html.escape(EMBEDDED_LIMITS) in page
    assert html.escape(EMBEDDED_LIMITS) not in data_section([tmp_path / "train.csv"], "fastmri", [], "all", [])


def test_table1_reports_mean_and_sd_over_training_seeds_and_stats_average_seeds_per_volume(tmp_path):
    """Two training seeds: Table I's PSNR is the mean over seeds of each seed's volume mean, `PSNR sd` their sample
    sd, `PSNR seed<k>` each seed's value, the md prints mean ± sd; Table III and the statistics read each volume's
    seed-averaged value (computed here by hand)."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in (0, 1):
        for method in ("zero_filled", "ldpm"):
            for v in range(6):
                rows.append({"method": method, "acceleration": 8, "training_seed": seed, "volume": f"v{v}",
                             "patient_id": f"p{v // 2}", "dataset": "brain", "psnr": 20 + 5 * (method == "ldpm")
                             + seed + rng.normal(), "ssim": 0.5 + 0.1 * rng.random(), "nmse": 0.1 * rng.random()})
    volumes = pd.DataFrame(rows)
    table = table1(volumes, ["zero_filled", "ldpm"], {"dataset": "brain"}, 8, tmp_path / "t1")
    per_seed = volumes[volumes.method == "ldpm"].groupby("training_seed").psnr.mean()
    row = table.loc["LDPM (Ours)"]
    assert row["PSNR"] == pytest.approx(per_seed.mean()) and row["PSNR sd"] == pytest.approx(per_seed.std(ddof=1))
    assert row["PSNR seed0"] == pytest.approx(per_seed[0]) and row["PSNR seed1"] == pytest.approx(per_seed[1])
    assert row["volumes"] == 6
    assert f"{per_seed.mean():.2f} ± {per_seed.std(ddof=1):.2f}" in (tmp_path / "t1.md").read_text()
    stats = stats_table(volumes, ["zero_filled", "ldpm"], {"dataset": "brain"}, 8, tmp_path / "s", n_boot=200)
    averaged = volumes.groupby(["method", "volume"]).psnr.mean()
    got = stats.query("method == 'zero_filled' and metric == 'psnr'").iloc[0]
    assert got["mean"] == pytest.approx(averaged["zero_filled"].mean()) and got["volumes"] == 6
    one_seed = table1(volumes[volumes.training_seed == 0], ["ldpm"], {"dataset": "brain"}, 8, tmp_path / "one")
    assert "PSNR sd" not in one_seed.columns and "±" not in (tmp_path / "one.md").read_text()
