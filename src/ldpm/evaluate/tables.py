"""Tables I and III from per-volume metric CSVs. Rows exist only for methods that were run.

Test sub-splits are filters over index columns declared in config (`test_splits`), so a new column
(e.g. "Skyra only") needs a config entry, not code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ldpm import LdpmError
from ldpm.io import atomic_output, read_table

log = logging.getLogger("ldpm.tables")

METHOD_LABELS = {"zero_filled": "Zero-Filled", "unet": "U-Net", "varnet": "E2E-VarNet", "swinmr": "SwinMR",
                 "score_mri": "Score-MRI", "ldpm": "LDPM (Ours)",
                 # beyond the paper (ldpm.method.reconstruct): extra rows, never replacing LDPM's
                 "ldpm_final_dc": "LDPM + final hard DC (beyond paper)",
                 "ldpm_mean_k": "LDPM, mean of K samples (beyond paper)"}


def select(frame: pd.DataFrame, filters: dict, name: str) -> pd.DataFrame:
    """Rows whose columns match every filter (a value or a list of accepted values)."""
    keep = pd.Series(True, index=frame.index)
    for column, wanted in filters.items():
        if column not in frame.columns:
            raise LdpmError(f"config key test_splits.{name}.{column}: no such index column; "
                            f"use one of {', '.join(c for c in frame.columns if frame[c].dtype == object)}")
        wanted = wanted if isinstance(wanted, list) else [wanted]
        keep &= frame[column].isin(wanted)
    if not keep.any():
        raise LdpmError(f"config key test_splits.{name}: the filter {filters} selects no test volume; "
                        f"widen it or add data")
    return frame[keep]


def load_volume_metrics(paths: list[str | Path]) -> pd.DataFrame:
    return pd.concat([read_table(p) for p in paths], ignore_index=True)


def write_table_formats(table: pd.DataFrame, stem: str | Path, caption: str, notes: list[str] = ()) -> None:
    """csv (full precision), md and tex (4 decimals, as the paper prints). Missing values read `n/a`;
    `notes` (why they are missing) follow the md table and end the tex caption."""
    stem = Path(stem)
    with atomic_output(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, na_rep="n/a")
    footer = "".join(f"\n{n}\n" for n in notes)
    cells = table.astype(object).where(table.notna(), None)  # object keeps counts integral; None prints as n/a
    with atomic_output(stem.with_suffix(".md")) as tmp:
        tmp.write_text(f"{caption}\n\n{cells.to_markdown(floatfmt='.4f', missingval='n/a')}\n{footer}")
    tex_caption = " ".join([caption, *notes]).replace("_", r"\_")
    with atomic_output(stem.with_suffix(".tex")) as tmp:
        tmp.write_text(table.to_latex(float_format="%.4f", caption=tex_caption, na_rep="n/a"))


def method_order(frame: pd.DataFrame, methods: list[str]) -> list[str]:
    return [m for m in methods if m in set(frame["method"])]


def perceptual_columns(perceptual: pd.DataFrame | None, methods: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """LPIPS / rFID / KID per method (NaN where n/a) and the footnotes that say why cells are n/a."""
    cols = pd.DataFrame(index=methods, columns=["LPIPS", "rFID", "KID"], dtype=float)
    if perceptual is None:
        return cols, ["LPIPS, rFID, KID: n/a, perceptual metrics were not computed for this table."]
    frame = perceptual.set_index("method").reindex(methods)
    cols["LPIPS"], cols["rFID"], cols["KID"] = frame["lpips"], frame["rfid"], frame["kid"]
    notes = []
    for column in ["lpips_note", "fid_note"]:
        notes += sorted({n for n in perceptual[column] if isinstance(n, str) and n})
    n_images = perceptual["n_images"].iloc[0] if len(perceptual) else 0
    if cols[["rFID", "KID"]].notna().any().any():
        notes.append(f"rFID/KID compare {n_images} reconstructed slices with their ground truths (the paper: 934); "
                     f"with few images FID is biased upwards, so compare methods within this table only.")
    return cols, [f"[{i}] {n}" for i, n in enumerate(notes, 1)]


def table1(volumes: pd.DataFrame, methods: list[str], split_filter: dict, acceleration: int,
           stem: str | Path, perceptual: pd.DataFrame | None = None, notes: list[str] = ()) -> pd.DataFrame:
    """Mean PSNR/SSIM/NMSE over the test volumes of `split_filter` and LPIPS/rFID/KID, one row per method;
    `notes` (per-method caveats from the config) follow the perceptual footnotes."""
    frame = select(volumes[volumes.acceleration == acceleration], split_filter, "main")
    order = method_order(frame, methods)
    table = frame.groupby("method")[["psnr", "ssim", "nmse"]].mean().reindex(order)
    table.columns = ["PSNR", "SSIM", "NMSE"]
    extra, perceptual_notes = perceptual_columns(perceptual, order)
    notes = [*perceptual_notes, *(f"[{i}] {n}" for i, n in enumerate(notes, len(perceptual_notes) + 1))]
    table = table.join(extra)
    table["volumes"] = frame.groupby("method").size()
    table.index = [METHOD_LABELS.get(m, m) for m in table.index]
    write_table_formats(table, stem, f"Table I: quantitative evaluation, AF {acceleration} "
                                     f"(mean over test volumes, fastMRI protocol)", notes)
    return table


def table3(volumes: pd.DataFrame, methods: list[str], test_splits: dict[str, dict], acceleration: int,
           stem: str | Path) -> pd.DataFrame:
    """PSNR per method across every configured test sub-split (one column each)."""
    frame = volumes[volumes.acceleration == acceleration]
    columns = {name: select(frame, filters, name).groupby("method")["psnr"].mean()
               for name, filters in test_splits.items()}
    table = pd.DataFrame(columns).reindex(method_order(frame, methods))
    table.index = [METHOD_LABELS.get(m, m) for m in table.index]
    write_table_formats(table, stem, f"Table III: PSNR across test sub-splits, AF {acceleration}")
    return table


COST_COLUMNS = {"seconds_per_slice": "s/slice", "gflops_per_slice": "GFLOPs/slice", "peak_rss_gib": "peak RSS (GiB)",
                "peak_gpu_gib": "peak GPU (GiB)"}


def compute_table(recon_files: list[str | Path], methods: list[str], acceleration: int,
                  stem: str | Path) -> pd.DataFrame:
    """Compute cost per method as measured by its reconstruct job (ldpm.reconstruct.Cost, read from the h5 attrs)."""
    import h5py

    rows = {}
    for path in recon_files:
        with h5py.File(path, "r") as fh:
            rows[fh.attrs["method"]] = {**{label: float(fh.attrs.get(key, float("nan")))
                                           for key, label in COST_COLUMNS.items()}, "device": fh.attrs["device"]}
    table = pd.DataFrame.from_dict(rows, orient="index").reindex([m for m in methods if m in rows])
    table.index = [METHOD_LABELS.get(m, m) for m in table.index]
    devices = ", ".join(sorted(set(table["device"])))
    write_table_formats(table, stem, f"Compute cost of reconstruction, AF {acceleration} ({devices}; per slice, "
                                     f"this run's test set and settings)",
                        ["FLOPs: matmuls and convolutions counted by torch.utils.flop_counter on the first batch; "
                         "seconds: the remaining batches; peak RSS: the whole reconstruct process (includes the "
                         "library stack); peak GPU: n/a on CPU. Paper-scale costs: bench/results.md."])
    return table
