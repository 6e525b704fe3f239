"""Raw fastMRI-format h5 → volume index → normalised magnitude slices in subject-level splits.

The same code serves the embedded data and real fastMRI: both are multi-coil `kspace` (slices, coils, H, W)
with an ISMRMRD header. Per volume: RSS of the coil images (fastMRI's `rss`), centre crop to `crop_size`²
(zero-padded back to it where a volume is smaller, see `volume_slices`), drop the last `drop_last_slices`
slices, resize to `image_size`², divide by the volume maximum (recorded as `norm_scale`, so metrics computed
with data_range = volume max are unchanged by it). The per-volume work runs as one job per shard of volumes; a
split job assigns the splits and a gather job writes the split files (see "sharded preprocessing" below).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from ldpm import LdpmError
from ldpm.data.ismrmrd import parse_header
from ldpm.io import atomic_output, open_h5, sha256_file, stable_seed, write_table

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
    ids = index["patient_id"]
    if ids[in_dist].map(type).nunique() > 1:  # index files parsed one by one: numeric ids in one, text in another
        ids = ids.astype(str)
    patients = np.array(sorted(ids[in_dist].unique()))
    if len(patients) < 3:
        raise LdpmError(f"only {len(patients)} in-distribution subjects; train/val/test need at least 3")
    order = np.random.default_rng(seed).permutation(patients)
    n_test = max(1, round(test_fraction * len(patients))) if test_fraction > 0 else 0  # 0: test only on test/ood
    n_val = max(1, round(val_fraction * len(patients)))
    if n_test + n_val >= len(patients):
        raise LdpmError("config keys data.split.val_fraction + test_fraction leave no training subject; lower them")
    by_patient = {p: "test" for p in order[:n_test]}
    by_patient |= {p: "val" for p in order[n_test:n_test + n_val]}
    by_patient |= {p: "train" for p in order[n_test + n_val:]}
    split[in_dist] = ids[in_dist].map(by_patient)
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
    import torch  # here, not at the top: split and gather (no FFTs) start 1.5 s faster without it
    import torch.nn.functional as F

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


# ------------------------------------------------------------------------------------------ sharded preprocessing
# The pipeline runs preprocessing as three kinds of job (workflow/rules/data.smk):
#   ldpm split            index file(s) -> splits.csv: volume -> split (subject level) and -> shard, one cheap job
#   ldpm preprocess-shard index rows of one shard -> shards/<dataset>/<shard>.{h5,csv}: the per-volume work, in
#                         parallel
#   ldpm gather           splits.csv + shards/ -> {split}.{h5,csv}, in index order (the workflow: one job per split)
# Shards are split-independent (a volume's images do not depend on its split), so a new split assignment reruns
# only `split` and `gather`. `preprocess` below runs the three in one process (tests, bench, a person).

SHARD_DIR = "shards"  # shard files live in this directory beside splits.csv (where `gather` looks for them)
SLICE_COLUMNS = ["slice_id", "volume", "slice", "dataset", "acquisition", "field_strength", "system_model",
                 "patient_id", "norm_scale"]  # one row per slice: the shard and split csv files


def plan_shards(index: pd.DataFrame, shard_size: int) -> pd.Series:
    """The shard of every index row: consecutive runs of rows (index order), named after their first volume.

    Boundaries are content-defined, so that adding, removing or changing one raw file changes one shard and
    leaves every other shard's name and members as they were: a shard starts at the first volume of a dataset,
    at every volume whose name hashes to 0 mod shard_size (one volume in shard_size), and after 2 * shard_size
    volumes without such a volume (a cap that keeps shards even; the one place where an insertion can move later
    boundaries, up to the next hashed one). Shards hold 1 to 2 * shard_size volumes, 0.86 * shard_size on average.
    An added volume that hashes to 0 splits its shard in two (2 shards change); fixed-size chunks of the sorted
    list would instead shift every later shard by one.
    """
    if shard_size < 1:
        raise LdpmError(f"config key data.shard_size: {shard_size}; must be >= 1")
    names, current, count, previous_dataset = [], None, 0, None
    for volume, dataset in zip(index["volume"].astype(str), index["dataset"].astype(str)):
        if (current is None or dataset != previous_dataset or count >= 2 * shard_size
                or stable_seed("shard", volume) % shard_size == 0):
            current, count = volume, 0
        names.append(current)
        count += 1
        previous_dataset = dataset
    return pd.Series(names, index=index.index, dtype=object)


def read_index_text(index_csv: str | Path) -> pd.DataFrame:
    """index.csv with every value as its text, the form `shard_rows_sha256` hashes (no float or id reparsing)."""
    if not Path(index_csv).exists():
        raise LdpmError(f"{index_csv}: file not found; run the index stage first")
    return pd.read_csv(index_csv, dtype=str, keep_default_na=False)


def shard_rows_sha256(index_text: pd.DataFrame, volumes: list[str]) -> str:
    """sha256 of the index rows of `volumes` (every column, as text): a shard job's parameter, so that Snakemake
    reruns exactly the shards whose rows changed (a raw file's sha256, its header facts, its subject)."""
    rows = index_text.set_index("volume", drop=False).loc[list(volumes)]
    return hashlib.sha256(rows.to_json(orient="records").encode()).hexdigest()


def split_table(index: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.DataFrame:
    """volume, dataset, patient_id, split per index row, in index order (the order of the split files)."""
    table = index[["volume", "dataset", "patient_id"]].copy()
    table["split"] = assign_splits(index, val_fraction, test_fraction, seed)
    return table


def write_splits(index_csv: str | Path | list[str | Path], out_csv: str | Path, *, val_fraction: float,
                 test_fraction: float, shard_size: int, seed: int) -> pd.DataFrame:
    """`ldpm split`: splits.csv from index.csv, or from the workflow's one index file per dataset in config order
    (subject-level assignment, seeded; the shard of every volume)."""
    files = [index_csv] if isinstance(index_csv, (str, Path)) else list(index_csv)
    # each file parsed on its own, as its shard jobs parse it (a name like 007 reads as the number 7 there too)
    table = split_table(pd.concat([pd.read_csv(f) for f in files], ignore_index=True), val_fraction, test_fraction,
                        seed)
    # shards from the names as written, as the workflow plans them
    table["shard"] = plan_shards(pd.concat([read_index_text(f) for f in files], ignore_index=True),
                                 shard_size).to_numpy()
    write_table(table, out_csv)
    log.info("%d volumes: %s; %d shards", len(table), table["split"].value_counts().to_dict(),
             table["shard"].nunique())
    return table


def _volume_images(vol, crop_size: int, image_size: int, drop_last_slices: int,
                   drop_key: str = "data.drop_last_slices") -> tuple[np.ndarray, float]:
    """(slices kept, image_size, image_size) float32 images of one index row, divided by the volume maximum; and
    that maximum. Every defect is a one-line LdpmError naming the file (and `drop_key`, the setting that applied)."""
    keep = vol.n_slices - drop_last_slices
    if keep < 1:
        raise LdpmError(f"{vol.path}: {vol.n_slices} slices but {drop_key}={drop_last_slices} drops them all; "
                        f"remove the volume or lower the setting (data.datasets.{vol.dataset}.drop_last_slices sets "
                        f"it for this dataset alone)")
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
    return (images / scale).numpy(), scale


def _empty_images(fh: h5py.File, image_size: int) -> h5py.Dataset:
    """The growable `images` dataset of shard and split files (one chunk per slice, as before sharding)."""
    return fh.create_dataset("images", shape=(0, image_size, image_size), maxshape=(None, image_size, image_size),
                             dtype=np.float32, chunks=(1, image_size, image_size))


def preprocess_shard(index_csv: str | Path, volumes: list[str], out_h5: str | Path, out_csv: str | Path, *,
                     crop_size: int, image_size: int, drop_last_slices: int,
                     rows_sha256: str | None = None, dataset_crop: dict[str, int] | None = None,
                     dataset_drop: dict[str, int] | None = None) -> int:
    """`ldpm preprocess-shard`: the normalised slices of `volumes` (index order) into out_h5 (`images`) and their
    rows (slice_id … norm_scale, as in the split files) into out_csv. rows_sha256, when given, must match the
    index rows of the volumes (the workflow planned the shard from them). `dataset_crop` gives a dataset its own
    crop size (e.g. a fastMRI folder added to the embedded default, whose field of view is 320 pixels wide), and
    `dataset_drop` its own drop_last_slices (e.g. 0 for one-slice volumes). Returns the number of slices."""
    index, text = pd.read_csv(index_csv), read_index_text(index_csv)  # values as before; names as written
    missing = [v for v in volumes if v not in set(text["volume"])]
    if missing:
        raise LdpmError(f"{index_csv}: no volume {missing[0]} (of {len(missing)} asked for); rerun the workflow, "
                        f"which plans shards from the current index")
    if rows_sha256 is not None and shard_rows_sha256(text, volumes) != rows_sha256:
        raise LdpmError(f"{index_csv}: the rows of this shard's volumes changed since the shard was planned; "
                        f"rerun the workflow")
    rows = index[text["volume"].isin(set(volumes)).to_numpy()]
    table = []
    with atomic_output(out_h5) as tmp, h5py.File(tmp, "w") as fh:
        dset = _empty_images(fh, image_size)
        for vol in tqdm(rows.itertuples(), total=len(rows), desc="preprocess", mininterval=2.0, disable=None):
            crop = (dataset_crop or {}).get(vol.dataset, crop_size)
            own_drop = vol.dataset in (dataset_drop or {})
            images, scale = _volume_images(
                vol, crop, image_size, dataset_drop[vol.dataset] if own_drop else drop_last_slices,
                f"data.datasets.{vol.dataset}.drop_last_slices" if own_drop else "data.drop_last_slices")
            start = dset.shape[0]
            dset.resize(start + len(images), axis=0)
            dset[start:] = images
            for s in range(len(images)):
                table.append({
                    "slice_id": f"{vol.volume}:{s:03d}", "volume": vol.volume, "slice": s, "dataset": vol.dataset,
                    "acquisition": vol.acquisition, "field_strength": vol.field_strength,
                    "system_model": vol.system_model, "patient_id": vol.patient_id, "norm_scale": scale})
        write_table(pd.DataFrame(table, columns=SLICE_COLUMNS), out_csv)
    log.info("%d volumes, %d slices -> %s", len(rows), len(table), out_h5)
    return len(table)


def shard_files(shard_dir: str | Path, dataset: str, shard: str) -> tuple[Path, Path]:
    """A shard's files, `<shard_dir>/<dataset>/<shard>.{h5,csv}`: a shard holds one dataset's volumes, and the
    workflow plans a shard job from that dataset's index alone (so an added dataset leaves the others' jobs be)."""
    folder = Path(shard_dir) / dataset
    return folder / f"{shard}.h5", folder / f"{shard}.csv"


def gather(splits_csv: str | Path, out_dir: str | Path, splits_to_write: tuple[str, ...] = SPLITS) -> dict[str, int]:
    """`ldpm gather`: `{split}.h5` (images) and `{split}.csv` (one row per slice) for each of `splits_to_write`
    (default train/val/test) into out_dir, volumes in splits.csv order, from the shard files
    `shards/<dataset>/<shard>.{h5,csv}` beside splits.csv (only the shards that hold those splits' volumes). Rows are
    copied as text and images as float32, so the split files equal those of one job doing all volumes. The workflow
    runs one job per split: a split file is rewritten only when its own volumes or shards change."""
    from ldpm.provenance import note_input

    unknown = [s for s in splits_to_write if s not in SPLITS]
    if unknown:
        raise LdpmError(f"no split '{unknown[0]}'; choose from {', '.join(SPLITS)}")
    splits = pd.read_csv(splits_csv, dtype=str, keep_default_na=False)
    for s in splits_to_write:
        if not (splits["split"] == s).any():
            raise LdpmError(f"split '{s}' is empty; add data or change data.split fractions")
    shard_dir = Path(splits_csv).parent / SHARD_DIR
    spans: dict[str, tuple[str, int, int]] = {}  # volume -> (shard, first row, end row) in the shard's files
    rows: dict[str, pd.DataFrame] = {}
    paths: dict[str, Path] = {}  # shard -> its .h5
    image_size = None
    wanted = set(splits.loc[splits["split"].isin(splits_to_write), "shard"])
    for shard, members in splits.groupby("shard", sort=False):
        if shard not in wanted:
            continue
        h5_path, csv_path = shard_files(shard_dir, members["dataset"].iloc[0], shard)
        members = members["volume"]
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False) if csv_path.exists() else None
        if table is None or not h5_path.exists():
            raise LdpmError(f"{shard_dir}: shard {shard} missing (.h5 or .csv); run `ldpm preprocess-shard` for it")
        with open_h5(h5_path) as fh:
            shape = fh["images"].shape
        if shape[0] != len(table):
            raise LdpmError(f"{h5_path}: {shape[0]} images but {csv_path.name} has {len(table)} rows; rerun the shard")
        if set(table["volume"]) != set(members):
            raise LdpmError(f"{csv_path}: holds volumes {sorted(set(table['volume']) ^ set(members))[:3]} … other "
                            f"than splits.csv assigns to shard {shard}; rerun the workflow")
        if image_size is not None and shape[1:] != (image_size, image_size):
            raise LdpmError(f"{h5_path}: images {shape[1]}x{shape[2]}, other shards {image_size}x{image_size}")
        image_size = shape[1]
        for volume, positions in table.groupby("volume", sort=False).indices.items():
            if positions[-1] - positions[0] + 1 != len(positions):
                raise LdpmError(f"{csv_path}: the slices of {volume} are not consecutive; rerun the shard")
            spans[volume] = (shard, int(positions[0]), int(positions[-1]) + 1)
        rows[shard] = table
        paths[shard] = h5_path
        note_input(h5_path)
        note_input(csv_path)
    out_dir = Path(out_dir)
    parts: dict[str, list[pd.DataFrame]] = {s: [] for s in splits_to_write}
    chosen = splits[splits["split"].isin(splits_to_write)]
    with contextlib.ExitStack() as stack:
        files = {s: stack.enter_context(h5py.File(stack.enter_context(atomic_output(out_dir / f"{s}.h5")), "w"))
                 for s in parts}
        dsets = {s: _empty_images(f, image_size) for s, f in files.items()}
        shard_file, open_name = None, None
        for vol in tqdm(chosen.itertuples(), total=len(chosen), desc="gather", mininterval=2.0, disable=None):
            shard, start, stop = spans[vol.volume]
            if shard != open_name:  # consecutive volumes share a shard: each shard is opened about once
                if shard_file is not None:
                    shard_file.close()
                shard_file, open_name = open_h5(paths[shard]), shard
            dset = dsets[vol.split]
            at = dset.shape[0]
            dset.resize(at + stop - start, axis=0)
            dset[at:] = shard_file["images"][start:stop]
            parts[vol.split].append(rows[shard].iloc[start:stop])
        if shard_file is not None:
            shard_file.close()
        for s in parts:
            write_table(pd.concat(parts[s], ignore_index=True), out_dir / f"{s}.csv")
    counts = {s: sum(len(p) for p in parts[s]) for s in parts}
    log.info("slices per split: %s", counts)
    return counts


def preprocess(index_csv: str | Path, out_dir: str | Path, *, crop_size: int, image_size: int,
               drop_last_slices: int, val_fraction: float, test_fraction: float, seed: int,
               shard_size: int = 16, dataset_crop: dict[str, int] | None = None,
               dataset_drop: dict[str, int] | None = None) -> dict[str, int]:
    """The whole stage in one process: split, every shard in turn, gather; writes `{split}.h5` and `{split}.csv`
    for train/val/test into out_dir (the shards and splits.csv only to a temporary directory inside it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".preprocess-", dir=out_dir) as tmp:
        splits_csv = Path(tmp) / "splits.csv"
        table = write_splits(index_csv, splits_csv, val_fraction=val_fraction, test_fraction=test_fraction,
                             shard_size=shard_size, seed=seed)
        for shard, members in table.groupby("shard", sort=False):
            preprocess_shard(index_csv, list(members["volume"]),
                             *shard_files(Path(tmp) / SHARD_DIR, members["dataset"].iloc[0], shard),
                             crop_size=crop_size, image_size=image_size, drop_last_slices=drop_last_slices,
                             dataset_crop=dataset_crop, dataset_drop=dataset_drop)
        return gather(splits_csv, out_dir)
