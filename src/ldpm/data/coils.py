"""Multicoil slices read from the raw files on demand (fastMRI's `SliceDataset` way): what the multicoil measurement
(`ldpm.physics.multicoil_measurement`) is simulated from, so memory stays flat at paper scale.

A slice of a split file (`{split}.csv`: volume, slice, norm_scale) is found in its raw file through the index
(`index/<dataset>.csv`: volume → path). Its coil k-space (C, H_raw, W_raw) is brought to the image grid's rows the
split files hold, with no resize: the readout oversampling removed as fastMRI does (inverse FFT along the readout,
centre crop of the rows to `crop_size`), then the inverse FFT along the phase encode. The phase-encode columns stay
the raw ones (W_raw: 320 for most fastMRI brain files, 368 knee, 396 or fewer than 320 for some brain files), so
the measurement's columns are the acquired lines: columns outside the header's encoding limits (fastMRI's
`padding_left/right`) are returned as not acquired, and no mask samples them. The image grid is the centre
`crop_size` columns of that raw grid (`ldpm.physics.centre_columns`; the operator pads and crops between them).
Divided by the volume's `norm_scale`, the RSS of these coil images on the image grid is the stored ground-truth
slice (tests/test_coils.py). A batch holds one raw width (`CoilSlices.runs`).
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
    """(C, H_raw, W_raw) raw k-space of one slice → (C, crop_size, W_raw) complex64 coil images: the readout (rows)
    cropped in image space as in `ldpm.data.preprocess.volume_slices`, the phase-encode columns the raw ones."""
    h = kspace.shape[-2]
    if h < crop_size:
        raise LdpmError(f"{path}: k-space has {h} readout rows, fewer than data.crop_size {crop_size}; the multicoil "
                        f"measurement keeps the image grid's rows without a resize: score this dataset under "
                        f"`measurements: [magnitude]` or lower data.crop_size")
    x = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(kspace.astype(np.complex64, copy=False), axes=-2), axis=-2,
                                    norm="ortho"), axes=-2)
    start = (h - crop_size) // 2
    x = x[:, start:start + crop_size]
    return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(x, axes=-1), axis=-1, norm="ortho"), axes=-1)


class CoilSlices:
    """The coil images of the rows of a split file, read per batch: `slices[rows]` → (coil images (B, C, H, W_raw)
    complex64, divided by each volume's norm_scale; acquired (B, 1, 1, W_raw) 0/1 float). Slices with fewer coils
    than the batch's most are zero-padded (a zero coil adds nothing to an RSS or a SENSE sum); a batch's slices
    share one raw width (`widths`, `runs`)."""

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
        if "kspace_width" in index.columns:
            widths = dict(zip(index["volume"].astype(str), index["kspace_width"].astype(int)))
        else:  # an index written before it recorded the k-space shape: read the shapes (h5 metadata only)
            widths = {}
            for volume, path in zip(self.rows["volume"].astype(str), self.paths):
                if volume not in widths:
                    with open_h5(path) as fh:
                        widths[volume] = int(fh["kspace"].shape[-1])
        self.widths = np.array([widths[v] for v in self.rows["volume"].astype(str)], dtype=int)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, H, W) of the images these slices give (the `ldpm.io.SliceFile` attribute)."""
        return len(self), self.crop_size, self.crop_size

    def runs(self, batch_size: int, rows=None) -> list[np.ndarray]:
        """`rows` (default: all, in order) cut into batches of at most `batch_size` consecutive rows that share a
        raw width: the order is kept, so the batches' outputs concatenate back to `rows`' order."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        cuts = np.flatnonzero(np.diff(self.widths[rows])) + 1
        return [part[i:i + batch_size] for part in np.split(rows, cuts) for i in range(0, len(part), batch_size)]

    def __getitem__(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        picked = range(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows).tolist()
        if len(set(self.widths[picked].tolist())) > 1:
            raise ValueError(f"rows of raw widths {sorted(set(self.widths[picked].tolist()))} in one batch; cut "
                             f"batches with CoilSlices.runs")
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
        """The multicoil measurement of `rows` (one raw width) under `mask` (B, 1, 1, W_raw), on the mask's device,
        with the image grid `crop_size` columns wide."""
        coils, acquired = self[rows]
        return multicoil_measurement(coils, mask, acquired, width=self.crop_size)
