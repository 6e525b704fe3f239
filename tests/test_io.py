"""ldpm.io.SliceFile: training reads the rows of each batch from the h5, and they are exactly read_images' rows."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from ldpm import LdpmError
from ldpm.io import SliceFile, read_images, write_images
from ldpm.train import EpochSampler


@pytest.mark.parametrize("layout", ["contiguous", "chunk per slice"])
def test_slice_file_rows_are_read_images_rows(tmp_path, layout):
    images = np.random.default_rng(0).random((13, 8, 8), dtype=np.float32)
    path = tmp_path / "train.h5"
    if layout == "contiguous":  # write_images
        write_images(path, images)
    else:  # what preprocess writes
        with h5py.File(path, "w") as fh:
            fh.create_dataset("images", data=images, chunks=(1, 8, 8))
    full = read_images(path)
    with SliceFile(path) as slices:
        assert len(slices) == 13 and slices.shape == (13, 8, 8)
        rows = [np.array([0, 1, 2]), np.array([3, 7, 8, 12]), np.array([5, 5, 1, 0, 12, -1]), np.array([], int),
                torch.tensor([2, 3, 10]), [4, 2]]
        rows += [EpochSampler(13, 4, seed).batch(step) for seed in range(3) for step in range(8)]
        rows += [EpochSampler(3, 8, 0).batch(0)]  # fewer items than the batch: repeats
        for r in rows:
            got = slices[r]
            assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
            np.testing.assert_array_equal(got.numpy(), full[np.asarray(r)])
        np.testing.assert_array_equal(slices[4].numpy(), full[4])
        np.testing.assert_array_equal(slices[2:11:3].numpy(), full[2:11:3])
        for bad in (13, -14, np.array([0, 13]), np.array([[1]]), np.array([0.5])):
            with pytest.raises(IndexError):
                slices[bad]


def test_slice_file_names_a_file_without_images(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh["recon"] = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(LdpmError, match="other.h5: no 'images' dataset"):
        SliceFile(tmp_path / "other.h5")
    with pytest.raises(LdpmError, match="missing.h5: file not found"):
        SliceFile(tmp_path / "missing.h5")
