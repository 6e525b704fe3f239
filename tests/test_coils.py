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


def test_the_multicoil_measurement_needs_the_image_grid(on_grid, tmp_path):
    """Off-grid volumes are refused when the job starts (from the index's kspace_width), naming a file and the key;
    without that column, at the first batch."""
    with pytest.raises(LdpmError, match=r"\.h5: k-space 64 columns wide .*data.crop_size"):
        CoilSlices(on_grid / "test.csv", [on_grid / "index.csv"], 48)
    pd.read_csv(on_grid / "index.csv").drop(columns="kspace_width").to_csv(tmp_path / "index.csv", index=False)
    coils = CoilSlices(on_grid / "test.csv", [tmp_path / "index.csv"], 48)
    with pytest.raises(LdpmError, match=r"data.crop_size"):
        coils[:1]


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
    assert val.meas.k_u.shape[1] == 3 and torch.equal(val.x, validation_set(inputs, 3, 0, magnitude,
                                                                             torch.device("cpu"), "t").x)
