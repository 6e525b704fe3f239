"""The multicoil measurement's data: coil slices read from the raw files at the image grid (`ldpm.data.coils`), and
the reconstruct stage under `measurement="multicoil"`."""

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ldpm import LdpmError
from ldpm.data.coils import CoilSlices
from ldpm.data.ismrmrd import build_header
from ldpm.physics import fft2, ifft2

SIZE = 64  # conftest's embedded matrix: raw k-space (slices, coils, 128, 64)


@pytest.fixture(scope="module")
def on_grid(tmp_path_factory, datasets):
    """The small embedded dataset preprocessed at its own grid (crop 64 = image 64: no resize)."""
    from ldpm.data.preprocess import build_index, preprocess

    out = tmp_path_factory.mktemp("grid")
    build_index(datasets, [], out / "index.csv")
    preprocess(out / "index.csv", out, crop_size=SIZE, image_size=SIZE, drop_last_slices=3, val_fraction=0.2,
               test_fraction=0.34, seed=0)
    return out


def test_the_rss_of_the_coil_slices_is_the_stored_ground_truth(on_grid):
    """Raw k-space → readout oversampling removed → coil images ÷ norm_scale: their RSS is the preprocessed slice
    (the magnitude protocol's ground truth, which every table scores against)."""
    from ldpm.io import read_images

    coils = CoilSlices(on_grid / "test.csv", [on_grid / "index.csv"], SIZE)
    gt = read_images(on_grid / "test.h5")
    images, acquired = coils[:]
    assert images.shape == (len(gt), 3, SIZE, SIZE) and images.dtype == torch.complex64
    assert torch.equal(acquired, torch.ones(len(gt), 1, 1, SIZE))  # embedded headers: every column acquired
    rss = images.abs().pow(2).sum(1).sqrt().numpy()
    np.testing.assert_allclose(rss, gt, rtol=0, atol=2e-6)
    picked, _ = coils[[2, 0]]
    assert torch.equal(picked, images[[2, 0]])


@pytest.mark.parametrize("grid", [48, 80])
def test_an_image_grid_off_the_raw_width_is_the_raw_grids_centre(datasets, tmp_path, grid):
    """Raw k-space 64 columns wide, image grids of 48 (the raw grid wider, as fastMRI knee's 368 for 320) and 80
    (narrower, as some brain files): the coil slices keep the raw columns, and their RSS brought to the grid
    (`centre_columns`) is the slice preprocessing stored (its centre crop, or its zero padding); an index written
    without the k-space width gives the same widths, read from the files."""
    from ldpm.data.preprocess import build_index, preprocess
    from ldpm.io import read_images
    from ldpm.physics import centre_columns, rss

    build_index(datasets, [], tmp_path / "index.csv")
    preprocess(tmp_path / "index.csv", tmp_path, crop_size=grid, image_size=grid, drop_last_slices=3,
               val_fraction=0.2, test_fraction=0.34, seed=0)
    coils = CoilSlices(tmp_path / "test.csv", [tmp_path / "index.csv"], grid)
    assert (coils.widths == SIZE).all() and coils.shape[1:] == (grid, grid)
    images, acquired = coils[:]
    assert images.shape[-2:] == (grid, SIZE) and acquired.shape[-1] == SIZE
    np.testing.assert_allclose(centre_columns(rss(images), grid)[:, 0].numpy(), read_images(tmp_path / "test.h5"),
                               rtol=0, atol=2e-6)
    pd.read_csv(tmp_path / "index.csv").drop(columns="kspace_width").to_csv(tmp_path / "old.csv", index=False)
    np.testing.assert_array_equal(CoilSlices(tmp_path / "test.csv", [tmp_path / "old.csv"], grid).widths, coils.widths)
    # training and validation on that grid: targets the stored slices, masks on the raw columns
    from ldpm.baselines import training_images, undersampled_batch, validation_set
    from ldpm.train import EpochSampler

    inputs = {"train": tmp_path / "train.h5", "train_csv": tmp_path / "train.csv", "index_brain": tmp_path / "index.csv",
              "val": tmp_path / "val.h5", "val_csv": tmp_path / "val.csv"}
    cfg = {"accelerations": [4], "center_fractions": [0.1], "measurement": "multicoil", "crop_size": grid}
    source = training_images(inputs, cfg)
    sampler = EpochSampler(len(source), 4, 0, source.widths)
    x, meas = undersampled_batch(source, sampler, 1, 0, cfg, torch.device("cpu"))
    np.testing.assert_allclose(x[:, 0].numpy(), read_images(tmp_path / "train.h5")[sampler.batch(1)], rtol=0, atol=2e-6)
    assert meas.mask.shape[-1] == meas.k_u.shape[-1] == SIZE and meas.x_u.shape[-2:] == (grid, grid)
    val = validation_set(inputs, 3, 0, cfg, torch.device("cpu"), "t")
    assert val.x.shape[-1] == grid and [m.k_u.shape[-1] for m in val.parts] == [SIZE]


def test_batches_hold_one_raw_width_and_keep_the_order(on_grid):
    """`runs` cuts rows into batches of one raw width in their order (a batch of coil k-space shares its shape);
    a batch of two widths is refused."""
    coils = CoilSlices(on_grid / "test.csv", [on_grid / "index.csv"], SIZE)
    coils.widths = np.array([64, 64, 64, 40, 40, 64, 64] + [64] * (len(coils) - 7))
    runs = coils.runs(2)
    assert [r.tolist() for r in runs[:5]] == [[0, 1], [2], [3, 4], [5, 6], [7, 8]]
    assert np.concatenate(runs).tolist() == list(range(len(coils)))
    assert [r.tolist() for r in coils.runs(8, [1, 2, 4, 6])] == [[1, 2], [4], [6]]
    with pytest.raises(ValueError, match="one batch"):
        coils[2:4]


def write_padded_volume(folder, n_coils=2, width=32, left=3, right=27):
    """A fastMRI-format volume whose header says only columns [left, right) were acquired (the rest zero padding),
    its test.csv / index.csv and the slice's coil images."""
    rng = np.random.default_rng(0)
    coils = (rng.standard_normal((1, n_coils, width, width)) + 1j * rng.standard_normal((1, n_coils, width, width)))
    canvas = np.zeros((1, n_coils, 2 * width, width), np.complex64)
    canvas[:, :, width // 2:width // 2 + width] = coils
    kspace = fft2(torch.from_numpy(canvas)).numpy()
    kspace[..., :left] = 0
    kspace[..., right:] = 0
    header = build_header(field_strength_T=3.0, system_model="x", system_vendor="y", encoded_shape=(2 * width, width),
                          recon_shape=(width, width), n_coils=n_coils)
    # encoding limits of the acquired lines: fastMRI's padding_left = y // 2 - centre, right = left + maximum + 1
    header = header.replace(f"<maximum>{width - 1}</maximum>", f"<maximum>{right - left - 1}</maximum>", 1)
    header = header.replace(f"<center>{width // 2}</center>", f"<center>{width // 2 - left}</center>", 1)
    path = folder / "vol.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("kspace", data=kspace)
        fh.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
    pd.DataFrame({"volume": ["vol"], "path": [str(path)]}).to_csv(folder / "index.csv", index=False)
    pd.DataFrame({"slice_id": ["vol:000"], "volume": ["vol"], "slice": [0], "norm_scale": [2.0]}).to_csv(
        folder / "test.csv", index=False)
    return kspace


def test_padding_columns_are_acquired_by_no_mask(tmp_path):
    kspace = write_padded_volume(tmp_path)
    assert "<maximum>23</maximum>" in (h5py.File(tmp_path / "vol.h5")["ismrmrd_header"][()].decode())
    images, acquired = CoilSlices(tmp_path / "test.csv", [tmp_path / "index.csv"], 32)[:]
    expected = np.zeros(32)
    expected[3:27] = 1
    np.testing.assert_array_equal(acquired[0, 0, 0].numpy(), expected)
    # the coil images hold the raw lines: their k-space is the raw k-space with the readout cropped, ÷ norm_scale
    np.testing.assert_allclose(fft2(images)[0].numpy() * 2.0, fft2(ifft2(torch.from_numpy(kspace[0]))[:, 16:48])
                               .numpy(), atol=1e-4)


def spying(weights, hp, device):
    def run(meas):
        SEEN.append(meas)
        return meas.x_u
    return run


SEEN: list = []


def test_reconstruct_gives_every_method_the_multicoil_measurement(tmp_path, monkeypatch):
    """The reconstruct stage under multicoil: the method receives the raw coil k-space under the test mask times
    the acquired columns (padding never sampled, even by a full mask), ESPIRiT maps for every coil, and the
    zero-filled RSS as x_u."""
    from ldpm import stages
    from ldpm.io import write_images
    from ldpm.reconstruct import reconstruct

    write_padded_volume(tmp_path)
    write_images(tmp_path / "test.h5", np.zeros((1, 32, 32), np.float32))
    np.savez(tmp_path / "masks.npz", slice_id=np.array(["vol:000"]), masks=np.ones((1, 32), bool))  # full sampling
    monkeypatch.setitem(stages.RECONSTRUCTORS, "spy", f"{__name__}:spying")
    SEEN.clear()
    reconstruct("spy", tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "masks.npz", tmp_path / "o.h5",
                device="cpu", measurement="multicoil", index_csvs=[tmp_path / "index.csv"], crop_size=32)
    [meas] = SEEN
    assert meas.k_u.shape == (1, 2, 32, 32) and meas.maps.shape == (1, 2, 32, 32)
    expected = np.zeros(32, np.float32)
    expected[3:27] = 1
    np.testing.assert_array_equal(meas.mask[0, 0, 0].numpy(), expected)
    torch.testing.assert_close(meas.x_u, ifft2(meas.k_u).abs().pow(2).sum(1, keepdim=True).sqrt())
    with pytest.raises(LdpmError, match="unknown measurement"):
        reconstruct("spy", tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "masks.npz", tmp_path / "p.h5",
                    device="cpu", measurement="coils")
    assert not (tmp_path / "p.h5").exists()


def test_training_under_multicoil_draws_the_same_masks_on_the_raw_coil_kspace(on_grid):
    """A training batch under the multicoil measurement: the same slices and the same mask draws as the magnitude
    batch of that step, the target the RSS of the coil images (≈ the stored slice), the measurement their masked
    coil k-space; the validation set pairs the stored slices with their coil k-space."""
    from ldpm.baselines import training_images, undersampled_batch, validation_set
    from ldpm.io import read_images
    from ldpm.train import EpochSampler

    inputs = {"train": on_grid / "train.h5", "train_csv": on_grid / "train.csv", "index_brain": on_grid / "index.csv",
              "val": on_grid / "val.h5", "val_csv": on_grid / "val.csv"}
    magnitude = {"accelerations": [4], "center_fractions": [0.1]}
    multicoil = magnitude | {"measurement": "multicoil", "crop_size": SIZE}
    sampler = EpochSampler(len(read_images(on_grid / "train.h5")), 4, 0)
    x_mag, meas_mag = undersampled_batch(training_images(inputs, magnitude), sampler, 2, 0, magnitude,
                                         torch.device("cpu"))
    source = training_images(inputs, multicoil)
    x, meas = undersampled_batch(source, sampler, 2, 0, multicoil, torch.device("cpu"))
    coils, _ = source[sampler.batch(2)]
    assert meas.k_u.shape == coils.shape and coils.shape[1] == 3
    assert torch.equal(meas.mask, meas_mag.mask)
    torch.testing.assert_close(x, x_mag, rtol=0, atol=2e-6)
    torch.testing.assert_close(meas.k_u, fft2(coils) * meas.mask)
    val = validation_set(inputs, 3, 0, multicoil, torch.device("cpu"), "t")
    assert val.parts[0].k_u.shape[1] == 3 and torch.equal(val.x, validation_set(inputs, 3, 0, magnitude,
                                                                             torch.device("cpu"), "t").x)


def write_volume(folder, name, width, n_slices=2, n_coils=2, rows=64):
    """A fastMRI-format volume `name` of raw k-space (n_slices, n_coils, rows, width), every column acquired."""
    rng = np.random.default_rng(width)
    kspace = (rng.standard_normal((n_slices, n_coils, rows, width))
              + 1j * rng.standard_normal((n_slices, n_coils, rows, width))).astype(np.complex64)
    header = build_header(field_strength_T=3.0, system_model="x", system_vendor="y", encoded_shape=(rows, width),
                          recon_shape=(rows // 2, rows // 2), n_coils=n_coils)
    with h5py.File(folder / f"{name}.h5", "w") as fh:
        fh.create_dataset("kspace", data=kspace)
        fh.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
    return pd.DataFrame({"slice_id": [f"{name}:{i:03d}" for i in range(n_slices)], "volume": name,
                         "slice": range(n_slices), "norm_scale": 1.0})


def test_reconstruct_runs_raw_widths_in_batches_of_one_width_with_masks_drawn_at_each(tmp_path, monkeypatch):
    """A test set of raw widths 32 (the grid), 40 (wider) and 28 (narrower): the method gets batches of one raw
    width in the test set's order, each on the 32-column image grid; the saved test mask where the widths agree,
    else the same slice's test mask drawn at its raw width (seeded as the saved ones); the output rows align."""
    from ldpm import stages
    from ldpm.data.masks import make_test_masks, sample_mask
    from ldpm.io import stable_seed, write_images
    from ldpm.reconstruct import reconstruct

    rows = pd.concat([write_volume(tmp_path, name, width) for name, width in (("a", 32), ("b", 40), ("c", 28))])
    rows.to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"volume": list("abc"), "path": [str(tmp_path / f"{v}.h5") for v in "abc"]}).to_csv(
        tmp_path / "index.csv", index=False)
    write_images(tmp_path / "test.h5", np.zeros((6, 32, 32), np.float32))
    stored = make_test_masks(rows["slice_id"].tolist(), 32, 4, 0.16, 5, tmp_path / "masks.npz")
    monkeypatch.setitem(stages.RECONSTRUCTORS, "spy", f"{__name__}:spying")
    SEEN.clear()
    reconstruct("spy", tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "masks.npz", tmp_path / "o.h5",
                batch_size=4, device="cpu", measurement="multicoil", index_csvs=[tmp_path / "index.csv"],
                crop_size=32, mask_seed=5)
    assert [m.k_u.shape[-1] for m in SEEN] == [32, 40, 28] and all(m.x_u.shape == (2, 1, 32, 32) for m in SEEN)
    np.testing.assert_array_equal(SEEN[0].mask[:, 0, 0].numpy(), stored[:2])
    for meas, ids, width in ((SEEN[1], ["b:000", "b:001"], 40), (SEEN[2], ["c:000", "c:001"], 28)):
        expected = [sample_mask(width, 4, 0.16, stable_seed(5, 4, i)) for i in ids]  # the saved masks' seeding
        np.testing.assert_array_equal(meas.mask[:, 0, 0].numpy(), expected)
    with h5py.File(tmp_path / "o.h5") as fh:
        np.testing.assert_array_equal(fh["recon"][()], torch.cat([m.x_u for m in SEEN])[:, 0].numpy())


def test_tuning_measures_picked_rows_in_batches_of_one_width_in_their_order(tmp_path):
    """The tuning grid's validation slices (a sparse pick of rows) under multicoil: batches of one raw width, in the
    picked order, each slice with its own mask (drawn at its raw width by `validation_batch`)."""
    from ldpm.io import write_images
    from ldpm.tuning import coil_slices, measurements, validation_batch

    rows = pd.concat([write_volume(tmp_path, name, width, n_slices=3) for name, width in (("a", 32), ("b", 40))])
    rows.to_csv(tmp_path / "val.csv", index=False)
    pd.DataFrame({"volume": ["a", "b"], "path": [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]}).to_csv(
        tmp_path / "index.csv", index=False)
    write_images(tmp_path / "val.h5", np.random.default_rng(0).random((6, 32, 32), dtype=np.float32))
    coils = coil_slices("multicoil", tmp_path / "val.csv", [tmp_path / "index.csv"], 32)
    x, masks, _, picked = validation_batch(tmp_path / "val.h5", tmp_path / "val.csv", 4, 4, 0.16, 0,
                                           widths=coils.widths)
    assert picked.tolist() == [0, 2, 3, 5] and [m.shape[-1] for m in masks] == [32, 32, 40, 40]
    batches = measurements(x, masks, picked, 8, torch.device("cpu"), coils)
    assert [len(m) for m in batches] == [2, 2] and [m.k_u.shape[-1] for m in batches] == [32, 40]
    for meas, part in zip(batches, ([0, 1], [2, 3])):
        assert torch.equal(meas.mask, torch.stack([masks[i] for i in part]))
        full, _ = coils[picked[part]]
        torch.testing.assert_close(meas.k_u, fft2(full) * meas.mask)


def test_methods_that_reconstruct_at_the_raw_width_return_its_centre_on_the_image_grid():
    """E2E-VarNet and the CS rows reconstruct the whole raw grid (k-space 40 columns wide here, as knee's 368);
    what they return is fastMRI's centre crop of it to the 32-column image grid (fastmri.data.transforms.center_crop,
    the crop fastMRI applies to VarNet's and BART's outputs)."""
    from fastmri.data.transforms import center_crop

    from ldpm.baselines.cs import cs_reconstruct, reconstructor_for
    from ldpm.baselines.varnet import build_varnet, varnet_image, varnet_reconstruct
    from ldpm.physics import multicoil_measurement

    g = torch.Generator().manual_seed(0)
    coils = torch.complex(torch.randn(2, 3, 24, 40, generator=g), torch.randn(2, 3, 24, 40, generator=g))
    mask = torch.zeros(2, 1, 1, 40)
    mask[..., 16:24] = 1
    mask[..., ::4] = 1
    meas = multicoil_measurement(coils, mask, width=32)
    torch.manual_seed(0)
    model = build_varnet({"num_cascades": 1, "chans": 2, "pools": 1, "sens_chans": 2, "sens_pools": 1}).eval()
    with torch.no_grad():
        image = varnet_image(model, meas)
        assert image.shape == (2, 1, 24, 32)
        torch.testing.assert_close(image, center_crop(varnet_reconstruct(model, meas.k_u, meas.mask), (24, 32)))
    image = reconstructor_for("cs_tv", 0.01, {"iterations": 3, "backend": "sigpy"})(meas)
    full = cs_reconstruct(meas.k_u.numpy(), meas.mask.numpy(), 0.01, "tv", 3, maps=meas.maps.numpy())
    assert image.shape == (2, 1, 24, 32)
    torch.testing.assert_close(image, center_crop(torch.from_numpy(np.abs(full)[:, None]), (24, 32)))
