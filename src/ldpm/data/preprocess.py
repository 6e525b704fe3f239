"""Raw fastMRI-format h5 → volume index → normalised magnitude slices in subject-level splits.

The same code serves the embedded data and real fastMRI: both are multi-coil `kspace` (slices, coils, H, W)
with an ISMRMRD header. Per volume: RSS of the coil images (fastMRI's `rss`), centre crop to `crop_size`²
(zero-padded back to it where a volume is smaller, see `volume_slices`), drop the last `drop_last_slices`
slices, resize to `image_size`², divide by the volume maximum (recorded as `norm_scale`, so metrics computed
with data_range = volume max are unchanged by it).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ldpm import LdpmError
from ldpm.data.ismrmrd import parse_header
from ldpm.io import atomic_output, open_h5, sha256_file, write_table

log = logging.getLogger("ldpm.data")

KNOWN_ACQUISITIONS = ("AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR", "CORPD_FBK", "CORPDFS_FBK")
NOMINAL_FIELDS_T = (0.55, 1.5, 3.0, 7.0)
SPLITS = ("train", "val", "test")


def nominal_field(field_strength_t: float) -> float:
    """1.494 T → 1.5, 2.89 T → 3.0: the label a user filters on."""
    return min(NOMINAL_FIELDS_T, key=lambda f: abs(f - field_strength_t))


def read_volume_info(path: Path, extra_acquisitions: list[str] = (), subject_from: str = "patient_id") -> dict:
    """Header and attribute facts of one raw volume; every defect is a one-line LdpmError naming the file.

    The subject (`patient_id` column, the unit of the splits) is the file's `patient_id` attribute; a file without
    one is an error, since guessing would let one subject's volumes land in two splits. `subject_from="filename"`
    (config key data.datasets.<name>.subject_from) makes every file of a dataset its own subject, the file stem.
    """
    with open_h5(path) as fh:
        if "kspace" not in fh:
            raise LdpmError(f"{path}: no 'kspace' dataset; this is not a fastMRI raw file, remove it from the input")
        shape = fh["kspace"].shape
        if len(shape) != 4:
            raise LdpmError(f"{path}: kspace has shape {shape}; expected multi-coil (slices, coils, H, W)")
        if "ismrmrd_header" not in fh:
            raise LdpmError(f"{path}: no 'ismrmrd_header' dataset; field strength and scanner are unknown")
        try:
            header = parse_header(fh["ismrmrd_header"][()])
        except ValueError as exc:
            raise LdpmError(f"{path}: {exc}") from None
        acquisition = str(fh.attrs.get("acquisition", ""))
        patient_id = str(fh.attrs.get("patient_id", ""))
    if acquisition not in (*KNOWN_ACQUISITIONS, *extra_acquisitions):
        raise LdpmError(f"{path}: unknown acquisition '{acquisition}'; add it to config key "
                        f"data.extra_acquisitions if it is intended")
    if subject_from == "filename":
        patient_id = path.stem
    elif not patient_id:
        raise LdpmError(f"{path}: no patient_id attribute, so its subject (and split) is unknown; add the attribute, "
                        f"or set config key data.datasets.<name>.subject_from: filename to make each file its own "
                        f"subject")
    return {
        "acquisition": acquisition,
        "field_strength_T": header["field_strength_T"],
        "field_strength": nominal_field(header["field_strength_T"]),
        "system_model": header["system_model"],
        "n_slices": shape[0], "n_coils": shape[1], "kspace_height": shape[2], "kspace_width": shape[3],
        "patient_id": patient_id,
    }


def build_index(datasets: dict[str, dict], extra_acquisitions: list[str], out_csv: str | Path) -> pd.DataFrame:
    """One row per raw volume of every configured dataset (name → {role, paths[, subject_from]}), with its sha256.

    Knee volumes (CORPD_FBK / CORPDFS_FBK, 15 coils, 640×368 k-space) are known acquisitions: they index and
    preprocess like brain ones, e.g. as an `ood` dataset. Any other acquisition goes in `extra_acquisitions`.
    """
    rows = []
    for name, spec in datasets.items():
        files = sorted(f for d in spec["paths"] for f in Path(d).glob("*.h5"))
        if not files:
            raise LdpmError(f"config key data.datasets.{name}.paths: no .h5 files in {spec['paths']}")
        for path in tqdm(files, desc=f"index {name}", mininterval=2.0, disable=None):
            info = read_volume_info(path, extra_acquisitions, spec.get("subject_from", "patient_id"))
            rows.append({"dataset": name, "role": spec["role"], "volume": path.stem, "path": str(path),
                         "sha256": sha256_file(path), **info})
    index = pd.DataFrame(rows)
    duplicated = index["volume"][index["volume"].duplicated()]
    if len(duplicated):
        raise LdpmError(f"volume name {duplicated.iloc[0]} appears twice across data.datasets; names must be unique")
    write_table(index, out_csv)
    log.info("indexed %d volumes from %d datasets", len(index), len(datasets))
    return index


def assign_splits(index: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """Subject-level split: all volumes of a patient land in one split. Out-of-distribution data is test only."""
    split = pd.Series("test", index=index.index)
    in_dist = index["role"] == "in_distribution"
    patients = np.array(sorted(index.loc[in_dist, "patient_id"].unique()))
    if len(patients) < 3:
        raise LdpmError(f"only {len(patients)} in-distribution subjects; train/val/test need at least 3")
    order = np.random.default_rng(seed).permutation(patients)
    n_test = max(1, round(test_fraction * len(patients)))
    n_val = max(1, round(val_fraction * len(patients)))
    if n_test + n_val >= len(patients):
        raise LdpmError("config keys data.split.val_fraction + test_fraction leave no training subject; lower them")
    by_patient = {p: "test" for p in order[:n_test]}
    by_patient |= {p: "val" for p in order[n_test:n_test + n_val]}
    by_patient |= {p: "train" for p in order[n_test + n_val:]}
    split[in_dist] = index.loc[in_dist, "patient_id"].map(by_patient)
    return split


def volume_slices(kspace: np.ndarray, crop_size: int, image_size: int) -> torch.Tensor:
    """(slices, coils, H, W) complex k-space → (slices, image_size, image_size) RSS magnitude, not normalised.

    The centred 2-D inverse FFT of fastmri.ifft2c (ifftshift → orthonormal ifft → fftshift) is done one axis at a
    time, cropping the rows between the passes: fastMRI's 2× readout oversampling (640 rows) then halves the second
    pass. numpy's FFT keeps complex64 and ran 2.5× faster than torch's CPU FFT on 640×320×8-coil volumes (bench P2).
    tests/test_data.py checks the result against fastmri.ifft2c + rss + center_crop.

    An image smaller than crop_size on an axis (fastMRI brain has some narrower than 320 columns, FLAIR 203 among
    them) is centre-cropped to min(crop_size, size) per axis, then zero-padded back to crop_size, centred as the
    inverse of center_crop. Padding rather than fastMRI's own fix (its transforms crop such a volume to a W×W
    square, complex_center_crop): resizing that square, or a crop×W rectangle, to image_size would magnify or
    distort its anatomy against every other volume, while padding keeps the pixel grid; the padded band is outside
    the acquired field of view, where there is no signal.
    """
    h, w = kspace.shape[-2:]
    x = kspace.astype(np.complex64, copy=False)
    for axis, size in ((-2, h), (-1, w)):
        x = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(x, axes=axis), axis=axis, norm="ortho"), axes=axis)
        n = min(crop_size, size)
        start = (size - n) // 2  # fastmri's center_crop offset
        x = x[:, :, start:start + n] if axis == -2 else x[..., start:start + n]
    rss = torch.from_numpy(np.sqrt((x.real ** 2 + x.imag ** 2).sum(axis=1)))
    ph, pw = crop_size - rss.shape[-2], crop_size - rss.shape[-1]
    if ph or pw:  # center_crop of the padded image back to the small size returns it unchanged
        rss = F.pad(rss, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    if image_size != crop_size:
        rss = F.interpolate(rss[:, None], size=(image_size, image_size), mode="bilinear",
                            antialias=True, align_corners=False)[:, 0]
    return rss


def preprocess(index_csv: str | Path, out_dir: str | Path, *, crop_size: int, image_size: int,
               drop_last_slices: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, int]:
    """Write `{split}.h5` (images) and `{split}.csv` (one row per slice) for train/val/test into out_dir."""
    index = pd.read_csv(index_csv)
    index["split"] = assign_splits(index, val_fraction, test_fraction, seed)
    out_dir = Path(out_dir)
    tables: dict[str, list[dict]] = {s: [] for s in SPLITS}
    with contextlib.ExitStack() as stack:
        files = {s: stack.enter_context(h5py.File(stack.enter_context(atomic_output(out_dir / f"{s}.h5")), "w"))
                 for s in SPLITS}
        for f in files.values():
            f.create_dataset("images", shape=(0, image_size, image_size), maxshape=(None, image_size, image_size),
                             dtype=np.float32, chunks=(1, image_size, image_size))
        for vol in tqdm(index.itertuples(), total=len(index), desc="preprocess", mininterval=2.0, disable=None):
            keep = vol.n_slices - drop_last_slices
            if keep < 1:
                raise LdpmError(f"{vol.path}: {vol.n_slices} slices but data.drop_last_slices={drop_last_slices} "
                                f"drops them all; remove the volume or lower the setting")
            with open_h5(vol.path) as fh:
                kspace = fh["kspace"][:keep]
            if not np.isfinite(kspace).all():
                raise LdpmError(f"{vol.path}: k-space contains NaN or Inf; the file is damaged, remove or re-copy it")
            h, w = kspace.shape[-2:]
            if min(h, w) < crop_size:
                log.info("%s: k-space %dx%d is smaller than data.crop_size=%d; image centre-cropped to %dx%d and "
                         "zero-padded to %dx%d", vol.path, h, w, crop_size, min(h, crop_size), min(w, crop_size),
                         crop_size, crop_size)
            images = volume_slices(kspace, crop_size, image_size)
            scale = float(images.max())
            if scale <= 0:
                raise LdpmError(f"{vol.path}: all-zero image volume; remove it from the input")
            dset = files[vol.split]["images"]
            start = dset.shape[0]
            dset.resize(start + keep, axis=0)
            dset[start:] = (images / scale).numpy()
            for s in range(keep):
                tables[vol.split].append({
                    "slice_id": f"{vol.volume}:{s:03d}", "volume": vol.volume, "slice": s, "dataset": vol.dataset,
                    "acquisition": vol.acquisition, "field_strength": vol.field_strength,
                    "system_model": vol.system_model, "patient_id": vol.patient_id, "norm_scale": scale})
        for s in SPLITS:
            if not tables[s]:
                raise LdpmError(f"split '{s}' is empty; add data or change data.split fractions")
            write_table(pd.DataFrame(tables[s]), out_dir / f"{s}.csv")
    counts = {s: len(t) for s, t in tables.items()}
    log.info("slices per split: %s", counts)
    return counts
