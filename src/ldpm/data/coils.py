"""Multicoil slices read from the raw files on demand (fastMRI's `SliceDataset` way): what the multicoil measurement
(`ldpm.physics.multicoil_measurement`) is simulated from, so memory stays flat at paper scale.

A slice of a split file (`{split}.csv`: volume, slice, norm_scale) is found in its raw file through the index
(`index/<dataset>.csv`: volume → path). Its coil k-space (C, H_raw, W) is brought to the image grid the split files
hold, with no resize: the readout oversampling removed as fastMRI does (inverse FFT along the readout, centre crop
of the rows to `crop_size`), then the inverse FFT along the phase encode. Divided by the volume's `norm_scale`, the
RSS of these coil images is the stored ground-truth slice (tests/test_coils.py). The phase-encode columns are the
raw ones, so the measurement's columns are the acquired lines: columns outside the header's encoding limits
(fastMRI's `padding_left/right`) are returned as not acquired, and no mask samples them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ldpm import LdpmError
from ldpm.data.ismrmrd import acquired_columns, parse_header
from ldpm.io import open_h5, read_table
from ldpm.physics import Measurement, multicoil_measurement


def coil_images(kspace: np.ndarray, crop_size: int, path: str = "") -> np.ndarray:
    """(C, H_raw, W) raw k-space of one slice → (C, crop_size, W) complex64 coil images at the image grid: the
    readout (rows) cropped in image space as in `ldpm.data.preprocess.volume_slices`, the columns not resized."""
    h, w = kspace.shape[-2:]
    if w != crop_size or h < crop_size:
        raise LdpmError(f"{path}: k-space {h}x{w}; the multicoil measurement works at the image grid without a "
                        f"resize, so it needs {crop_size} phase-encode columns (data.crop_size) and at least as many "
                        f"readout rows; score this dataset under `measurements: [magnitude]` or set data.crop_size")
    x = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(kspace.astype(np.complex64, copy=False), axes=-2), axis=-2,
                                    norm="ortho"), axes=-2)
    start = (h - crop_size) // 2
    x = x[:, start:start + crop_size]
    return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(x, axes=-1), axis=-1, norm="ortho"), axes=-1)


class CoilSlices:
    """The coil images of the rows of a split file, read per batch: `slices[rows]` → (coil images (B, C, H, W)
    complex64, divided by each volume's norm_scale; acquired (B, 1, 1, W) 0/1 float). Slices with fewer coils than
    the batch's most are zero-padded (a zero coil adds nothing to an RSS or a SENSE sum)."""

    def __init__(self, slices_csv, index_csvs: list, crop_size: int):
        self.rows = read_table(slices_csv)
        index = pd.concat([pd.read_csv(f, dtype={"volume": str}) for f in index_csvs], ignore_index=True)
        paths = dict(zip(index["volume"].astype(str), index["path"]))
        missing = sorted(set(self.rows["volume"].astype(str)) - set(paths))
        if missing:
            raise LdpmError(f"{slices_csv}: volume {missing[0]} is in no index file ({', '.join(map(str, index_csvs))}); "
                            f"rerun the workflow")
        self.paths = [paths[v] for v in self.rows["volume"].astype(str)]
        self.crop_size = crop_size
        if "kspace_width" in index.columns:  # refuse off-grid volumes when the job starts, not at their batch
            widths = dict(zip(index["volume"].astype(str), index["kspace_width"]))
            off = [v for v in dict.fromkeys(self.rows["volume"].astype(str)) if widths[v] != crop_size]
            if off:
                raise LdpmError(f"{paths[off[0]]}: k-space {widths[off[0]]} columns wide ({len(off)} volume(s) of "
                                f"{slices_csv} are off the grid); the multicoil measurement works at the image grid "
                                f"without a resize, so it needs {crop_size} phase-encode columns (data.crop_size); "
                                f"score this dataset under `measurements: [magnitude]` or set data.crop_size")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, H, W) of the images these slices give (the `ldpm.io.SliceFile` attribute)."""
        return len(self), self.crop_size, self.crop_size

    def __getitem__(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        picked = range(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows).tolist()
        images, acquired = [], []
        for i in picked:
            path, row = self.paths[i], self.rows.iloc[i]
            with open_h5(path) as fh:
                kspace = fh["kspace"][int(row["slice"])]
                header = parse_header(fh["ismrmrd_header"][()])
            if not np.isfinite(kspace).all():
                raise LdpmError(f"{path}: k-space contains NaN or Inf; the file is damaged, remove or re-copy it")
            images.append(coil_images(kspace, self.crop_size, path) / np.float32(row["norm_scale"]))
            left, right = acquired_columns(header, kspace.shape[-1])
            columns = np.zeros(kspace.shape[-1], np.float32)
            columns[left:right] = 1
            acquired.append(columns)
        n_coils = max(len(x) for x in images)
        batch = np.zeros((len(images), n_coils, *images[0].shape[1:]), np.complex64)
        for b, x in enumerate(images):
            batch[b, :len(x)] = x
        return torch.from_numpy(batch), torch.from_numpy(np.stack(acquired))[:, None, None, :]

    def measurement(self, rows, mask: torch.Tensor) -> Measurement:
        """The multicoil measurement of `rows` under `mask` (B, 1, 1, W), on the mask's device."""
        coils, acquired = self[rows]
        return multicoil_measurement(coils, mask, acquired)
