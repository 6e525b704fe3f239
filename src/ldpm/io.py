"""File I/O shared by every stage: atomic outputs, hashing, slice sets and reconstructions.

Every stage writes through `atomic_output`, so a failed or killed stage never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pandas as pd

from ldpm import LdpmError


# Files completed by atomic_output in this process: `ldpm.cli.main` writes a provenance record for each.
WRITTEN: list[Path] = []


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
        WRITTEN.append(path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from any printable key (e.g. seed and slice id), identical across processes and machines."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """h5py.File with a one-line error naming the file when it is missing, truncated or not HDF5."""
    try:
        return h5py.File(path, mode)
    except FileNotFoundError:
        raise LdpmError(f"{path}: file not found") from None
    except OSError as exc:
        raise LdpmError(f"{path}: not a readable HDF5 file ({str(exc).split(';')[0]}); "
                        f"re-copy or regenerate it, or remove it from the input directory") from None


def write_images(path: str | Path, images: np.ndarray, **attrs: object) -> None:
    """(N, H, W) float32 images in one h5 dataset `images`, written atomically."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset("images", data=np.asarray(images, dtype=np.float32))
        for key, value in attrs.items():
            fh.attrs[key] = value


def _images(fh: h5py.File, path: str | Path) -> h5py.Dataset:
    if "images" not in fh:
        raise LdpmError(f"{path}: no 'images' dataset; regenerate it with the stage that writes it")
    return fh["images"]


def read_images(path: str | Path) -> np.ndarray:
    """The whole (N, H, W) `images` dataset in memory: for test and validation sets. Training reads its slices
    on demand (`SliceFile`)."""
    with open_h5(path) as fh:
        return _images(fh, path)[()]


class SliceFile:
    """The `images` dataset of an h5 slice set, read on demand: `len`, `shape`, and `slices[rows]`, a torch tensor
    of just those rows, in the order asked (rows: an int, a slice, or a 1-D integer array; repeats allowed).

    Trainers index it with each step's batch (`ldpm.train.EpochSampler.batch`, sorted), so a training process holds
    one batch of slices, not the training set (paper scale: 23,000 slices × 320² float32 ≈ 9.5 GB per process).
    The values are exactly `read_images(path)[rows]`. The file is opened on first use, once per process (again
    after a fork), and rows are read in runs of consecutive rows. `preprocess` writes one HDF5 chunk per slice;
    a contiguous dataset (`write_images`) is read row-wise just as well.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open_h5(self.path) as fh:
            images = _images(fh, self.path)
            self.shape, self.dtype = tuple(images.shape), images.dtype
        self._fh: h5py.File | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.shape[0]

    def _dataset(self) -> h5py.Dataset:
        if self._fh is None or self._pid != os.getpid():
            self._fh, self._pid = open_h5(self.path), os.getpid()
        return self._fh["images"]

    def read(self, rows) -> np.ndarray:
        """`read_images(path)[rows]` as a numpy array, reading only those rows."""
        n = len(self)
        index = np.arange(n)[rows] if isinstance(rows, slice) else np.asarray(rows)
        if index.ndim > 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
            raise IndexError(f"{self.path}: rows must be an int, a slice or a 1-D integer array")
        scalar, index = index.ndim == 0, np.atleast_1d(index).astype(np.int64)
        index = np.where(index < 0, index + n, index)
        if index.size and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"{self.path}: row {int(index.max() if index.max() >= n else index.min())} "
                             f"out of range for {n} slices")
        unique, inverse = np.unique(index, return_inverse=True)
        out = np.empty((len(unique), *self.shape[1:]), dtype=self.dtype)
        images = self._dataset()
        for run in np.split(np.arange(len(unique)), np.flatnonzero(np.diff(unique) != 1) + 1):
            if len(run):  # rows unique[run] are consecutive: one read
                images.read_direct(out, np.s_[unique[run[0]]:unique[run[-1]] + 1], np.s_[run[0]:run[-1] + 1])
        if not np.array_equal(unique, index):  # repeats, or not in increasing order: back to the order asked
            out = out[inverse.reshape(-1)]
        return out[0] if scalar else out

    def __getitem__(self, rows):
        """`read(rows)` as a torch tensor (torch is imported here, so `ldpm.io` stays light for the CLI)."""
        import torch

        return torch.from_numpy(self.read(rows))

    def close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = None

    def __enter__(self) -> "SliceFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_recon(path: str | Path) -> np.ndarray:
    """(N, H, W) reconstructions written by `ldpm reconstruct` (dataset `recon`)."""
    with open_h5(path) as fh:
        if "recon" not in fh:
            raise LdpmError(f"{path}: no 'recon' dataset; rerun the reconstruct rule that writes it")
        return fh["recon"][()]


def read_table(path: str | Path) -> pd.DataFrame:
    if not Path(path).exists():
        raise LdpmError(f"{path}: file not found; run the stage that writes it first")
    return pd.read_csv(path)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
