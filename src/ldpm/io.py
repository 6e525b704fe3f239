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


# Files completed by atomic_output in this process: `ldpm.cli.main` writes a provenance sidecar for each.
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


def read_images(path: str | Path) -> np.ndarray:
    with open_h5(path) as fh:
        if "images" not in fh:
            raise LdpmError(f"{path}: no 'images' dataset; regenerate it with the stage that writes it")
        return fh["images"][()]


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
