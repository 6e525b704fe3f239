"""Tables I and III from per-volume metric CSVs. Rows exist only for methods that were run.

Test sub-splits are filters over index columns declared in config (`test_splits`), so a new column
(e.g. "Skyra only") needs a config entry, not code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ldpm import LdpmError
from ldpm.io import atomic_output, read_table

log = logging.getLogger("ldpm.tables")

METHOD_LABELS = {"zero_filled": "Zero-Filled",
                 # classical compressed-sensing references beyond the paper, no trained weights: TV, L1-wavelet (db4)
                 "cs_tv": "CS-TV", "cs_wavelet": "CS-wavelet",
                 "unet": "U-Net", "varnet": "E2E-VarNet", "swinmr": "SwinMR", "score_mri": "Score-MRI",
                 "ldpm": "LDPM (Ours)",
                 # beyond the paper (ldpm.method.reconstruct): extra rows, never replacing LDPM's
                 "ldpm_final_dc": "LDPM + final hard DC (beyond paper)",
                 "ldpm_mean_k": "LDPM, mean of K samples (beyond paper)"}


NORMALISE_CAPTION = {  # config data.normalise: the scale of the measurement every method was given
    "gt_max": "inputs divided by the ground-truth volume maximum, the paper's protocol: data.normalise gt_max",
    "input": "inputs divided by each zero-filled slice's maximum, outputs scaled back: data.normalise input"}


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


SEED = "training_seed"  # column of the per-volume and perceptual CSVs: the seed the method was trained with
METRIC_COLUMNS = ["psnr", "ssim", "nmse", "hfen", "kspace_residual"]


def load_volume_metrics(paths: list[str | Path]) -> pd.DataFrame:
    frame = pd.concat([read_table(p) for p in paths], ignore_index=True)
    return frame if SEED in frame.columns else frame.assign(**{SEED: 0})


def seed_averaged(volumes: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, AF, volume[, measurement]), each metric averaged over the training seeds: what Tables II-III and the
    statistics read, so that one seed's luck is not mistaken for a method's."""
    if SEED not in volumes.columns:
        return volumes
    metrics = [c for c in METRIC_COLUMNS if c in volumes.columns]
    keys = ["method", "acceleration", "volume"] + (["measurement"] if "measurement" in volumes.columns else [])
    rest = volumes.drop(columns=[*metrics, SEED]).groupby(keys, sort=False).first()
    return rest.join(volumes.groupby(keys, sort=False)[metrics].mean()).reset_index()


class Block(NamedTuple):
    """One printed table of a .md / .tex file: `shown` with floats printed by `formats` ({column: format spec},
    ".4f" where not given) and the cells where `bold` (a boolean frame like `shown`) is True in bold."""
    caption: str
    shown: pd.DataFrame
    bold: pd.DataFrame | None = None
    formats: dict[str, str] | None = None


TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"\textbar{}",
               "±": r"$\pm$", "δ": r"$\delta$", "−": r"$-$", "×": r"$\times$"}


def tex_escape(text) -> str:
    return "".join(TEX_ESCAPES.get(c, c) for c in str(text))


def md_escape(text) -> str:
    """A pipe inside a cell or label would end the cell: markdown's escape is `\\|`."""
    return str(text).replace("|", r"\|")


def cell_text(value, spec: str = ".4f") -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "n/a"
    return format(value, spec) if isinstance(value, (float, np.floating)) else str(value)


def printed(block: Block, escape, bold_wrap: str) -> pd.DataFrame:
    """`block.shown` as text: floats by their format, missing `n/a`, every cell and label escaped, bold cells
    wrapped (`bold_wrap` with {} for the text). Ints stay ints (counts)."""
    formats = block.formats or {}
    cells = pd.DataFrame({c: [escape(cell_text(v, formats.get(c, ".4f"))) for v in block.shown[c]]
                          for c in block.shown.columns}, index=block.shown.index)
    if block.bold is not None:
        bold = block.bold.reindex(index=cells.index, columns=cells.columns, fill_value=False).astype(bool)
        cells = cells.mask(bold, cells.map(bold_wrap.format))
    cells.index = [escape(i) for i in cells.index]
    cells.columns = [escape(c) for c in cells.columns]
    return cells


def right_aligned(column: pd.Series) -> bool:
    """Numbers right, text and all-missing columns left (as tabulate aligns them)."""
    values = column.dropna()
    return len(values) > 0 and all(isinstance(v, (int, float, np.number)) for v in values)


def write_tables(table: pd.DataFrame, stem: str | Path, blocks: list[Block], notes: list[str] = ()) -> None:
    """`<stem>.csv`: `table` at full precision (reviewers trace numbers back to it). `<stem>.md` / `.tex`: each
    block under its caption (md: the line before the table; tex: one table environment each), then `notes` (after
    the md tables; at the end of the last tex caption). Missing values read `n/a`."""
    stem = Path(stem)
    with atomic_output(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, na_rep="n/a")
    md, tex = [], []
    for i, block in enumerate(blocks):
        right = [right_aligned(block.shown[c]) for c in block.shown.columns]
        cells = printed(block, md_escape, "**{}**")
        # disable_numparse: the cells are already printed; tabulate would reformat "22.16" as 22.1600
        align = ["left"] + ["right" if r else "left" for r in right]
        md.append(f"{block.caption}\n\n{cells.to_markdown(disable_numparse=True, colalign=align)}\n")
        caption = " ".join([block.caption, *(notes if i == len(blocks) - 1 else [])])
        tex.append(printed(block, tex_escape, r"\textbf{{{}}}").to_latex(
            caption=tex_escape(caption), column_format="l" + "".join("r" if r else "l" for r in right)))
    with atomic_output(stem.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(md) + "".join(f"\n{note}\n" for note in notes))
    with atomic_output(stem.with_suffix(".tex")) as tmp:
        tmp.write_text("\n".join(tex))


def write_table_formats(table: pd.DataFrame, stem: str | Path, caption: str, notes: list[str] = (),
                        shown: pd.DataFrame | None = None, bold: pd.DataFrame | None = None,
                        formats: dict[str, str] | None = None) -> None:
    """csv (full precision), md and tex of one table (`write_tables`). `shown`, when given, is what the md and tex
    print instead of `table` (e.g. "mean ± sd" cells; the csv keeps the numbers); `bold` and `formats`: `Block`."""
    write_tables(table, stem, [Block(caption, table if shown is None else shown, bold, formats)], notes)


def method_order(frame: pd.DataFrame, methods: list[str]) -> list[str]:
    return [m for m in methods if m in set(frame["method"])]


def perceptual_notes(perceptual: pd.DataFrame | None) -> list[str]:
    """The footnotes that say why LPIPS / rFID / KID cells are n/a, and how to read rFID on few images."""
    if perceptual is None:
        return ["LPIPS, rFID, KID: n/a, perceptual metrics were not computed for this table."]
    notes = []
    for column in ["lpips_note", "fid_note"]:
        notes += sorted({n for n in perceptual[column] if isinstance(n, str) and n})
    n_images = perceptual["n_images"].iloc[0] if len(perceptual) else 0
    if perceptual[["rfid", "kid"]].notna().any().any():
        notes.append(f"rFID/KID compare {n_images} reconstructed slices with their ground truths (the paper: 934); "
                     f"with few images FID is biased upwards, so compare methods within this table only.")
    return [f"[{i}] {n}" for i, n in enumerate(notes, 1)]


TABLE1_COLUMNS = {"psnr": "PSNR", "ssim": "SSIM", "nmse": "NMSE", "lpips": "LPIPS", "rfid": "rFID", "kid": "KID"}
# How Table I's md / tex print each metric (the csv keeps full precision). PSNR in dB to 0.01 and rFID (tens to
# hundreds) to 2 decimals; SSIM, NMSE, LPIPS (0-1) and KID (~0.001-0.3) to 4. The paper prints 4 decimals
# everywhere; 0.01 dB is already far below the spread between test subjects.
TABLE1_FORMATS = {"PSNR": ".2f", "SSIM": ".4f", "NMSE": ".4f", "LPIPS": ".4f", "rFID": ".2f", "KID": ".4f"}
HIGHER_IS_BETTER = {"PSNR": True, "SSIM": True, "NMSE": False, "LPIPS": False, "rFID": False, "KID": False}


def best_cells(table: pd.DataFrame, formats: dict[str, str]) -> pd.DataFrame:
    """True where a cell holds its column's best value (`HIGHER_IS_BETTER`), among the rows with a value. Compared
    as printed (`formats`), so rows that print the same best value are all bold; a column with fewer than two
    values has no best."""
    bold = pd.DataFrame(False, index=table.index, columns=table.columns)
    for column, higher in HIGHER_IS_BETTER.items():
        values = table[column].map(lambda v: float(format(v, formats[column])), na_action="ignore")
        if values.count() >= 2:
            bold[column] = (values == (values.max() if higher else values.min())).to_numpy()
    return bold


def table1_per_seed(frame: pd.DataFrame, perceptual: pd.DataFrame | None) -> pd.DataFrame:
    """Table I's numbers per (method, training seed): means over the test volumes, and the perceptual metrics."""
    per_seed = frame.groupby(["method", SEED])[["psnr", "ssim", "nmse"]].mean()
    if perceptual is None:
        per_seed[["lpips", "rfid", "kid"]] = float("nan")
    else:
        seeded = perceptual if SEED in perceptual.columns else perceptual.assign(**{SEED: 0})
        per_seed = per_seed.join(seeded.set_index(["method", SEED])[["lpips", "rfid", "kid"]])
    return per_seed.rename(columns=TABLE1_COLUMNS)


def table1(volumes: pd.DataFrame, methods: list[str], split_filter: dict, acceleration: int,
           stem: str | Path, perceptual: pd.DataFrame | None = None, notes: list[str] = (),
           mask_type: str = "random", mask_per: str = "slice", normalise: str = "gt_max") -> pd.DataFrame:
    """Mean PSNR/SSIM/NMSE over the test volumes of `split_filter` and LPIPS/rFID/KID, one row per method;
    `notes` (per-method caveats from the config) follow the perceptual footnotes; the caption names the input
    scaling (config data.normalise, `NORMALISE_CAPTION`). The md / tex print each metric with `TABLE1_FORMATS` and
    its best value in bold (`best_cells`); the csv keeps full precision.

    With several training seeds each number is the mean over seeds of the per-seed value; the csv adds the sd over
    seeds (`<metric> sd`) and every seed's value (`<metric> seed<k>`), the md / tex print "mean ± sd"."""
    frame = select(volumes[volumes.acceleration == acceleration], split_filter, "main")
    frame = frame if SEED in frame.columns else frame.assign(**{SEED: 0})
    order = method_order(frame, methods)
    per_seed = table1_per_seed(frame, perceptual)
    columns = list(TABLE1_COLUMNS.values())
    table = per_seed.groupby("method")[columns].mean().reindex(order)
    seeds = sorted(frame[SEED].unique())
    shown = table.copy()
    bold = best_cells(table, TABLE1_FORMATS)
    if len(seeds) > 1:
        sd = per_seed.groupby("method")[columns].std(ddof=1).reindex(order)
        for column in columns:
            table[f"{column} sd"] = sd[column]
            f = TABLE1_FORMATS[column]
            shown[column] = [f"{m:{f}} ± {s:{f}}" if pd.notna(m) else None for m, s in zip(table[column], sd[column])]
        for seed in seeds:
            values = per_seed.xs(seed, level=SEED).reindex(order)
            for column in columns:
                table[f"{column} seed{seed}"] = values[column]
    table["volumes"] = shown["volumes"] = frame.groupby("method")["volume"].nunique()
    labels = [METHOD_LABELS.get(m, m) for m in order]
    table.index, shown.index, bold.index = labels, labels, labels
    footnotes = perceptual_notes(perceptual)
    notes = [*footnotes, *(f"[{i}] {n}" for i, n in enumerate(notes, len(footnotes) + 1))]
    if len(seeds) > 1:
        notes.append(f"Mean ± sd over {len(seeds)} training seeds ({', '.join(map(str, seeds))}); every seed's value "
                     f"is in the csv.")
    if bold.any().any():
        notes.append("Bold: the best value of each metric (highest PSNR / SSIM, lowest NMSE / LPIPS / rFID / KID) "
                     "among the rows with a value, as printed; the csv keeps full precision.")
    write_table_formats(table, stem, f"Table I: quantitative evaluation, AF {acceleration}, {mask_type} masks "
                                     f"(one per test {mask_per}; mean over test volumes, fastMRI protocol; "
                                     f"{NORMALISE_CAPTION[normalise]})", notes, shown, bold, TABLE1_FORMATS)
    return table


def table3(volumes: pd.DataFrame, methods: list[str], test_splits: dict[str, dict], acceleration: int,
           stem: str | Path, mask_type: str = "random", mask_per: str = "slice") -> pd.DataFrame:
    """PSNR per method across every configured test sub-split (one column each), averaged over training seeds."""
    frame = seed_averaged(volumes[volumes.acceleration == acceleration])
    columns = {name: select(frame, filters, name).groupby("method")["psnr"].mean()
               for name, filters in test_splits.items()}
    table = pd.DataFrame(columns).reindex(method_order(frame, methods))
    table.index = [METHOD_LABELS.get(m, m) for m in table.index]
    write_table_formats(table, stem, f"Table III: PSNR across test sub-splits, AF {acceleration}, {mask_type} masks "
                                     f"(one per test {mask_per})")
    return table


COST_COLUMNS = {"seconds_per_slice": "s/slice", "gflops_per_slice": "GFLOPs/slice", "peak_rss_gib": "peak RSS (GiB)",
                "peak_gpu_gib": "peak GPU (GiB)"}


def compute_table(recon_files: list[str | Path], methods: list[str], acceleration: int,
                  stem: str | Path, mask_type: str = "random") -> pd.DataFrame:
    """Compute cost per method as measured by its reconstruct job (ldpm.reconstruct.Cost, read from the h5 attrs).
    Every method's reconstruct job writes these attrs, with or without weights (zero-filled, CS-TV, CS-wavelet);
    a method's parameter count is not among them, so the table has no parameter column."""
    import h5py

    rows = {}
    for path in recon_files:
        with h5py.File(path, "r") as fh:
            rows[fh.attrs["method"]] = {**{label: float(fh.attrs.get(key, float("nan")))
                                           for key, label in COST_COLUMNS.items()}, "device": fh.attrs["device"]}
    table = pd.DataFrame.from_dict(rows, orient="index").reindex([m for m in methods if m in rows])
    table.index = [METHOD_LABELS.get(m, m) for m in table.index]
    devices = ", ".join(sorted(set(table["device"])))
    notes = ["FLOPs: matmuls and convolutions counted by torch.utils.flop_counter on the first batch; "
             "seconds: the remaining batches; peak RSS: the whole reconstruct process (includes the "
             "library stack); peak GPU: n/a on CPU. Paper-scale costs: bench/results.md."]
    # FFTs and elementwise updates are not counted: an FFT-only method (zero-filled, CS iterations) reads 0 GFLOPs
    uncounted = [label for label, g in table["GFLOPs/slice"].items() if g == 0]
    if uncounted:
        notes.append(f"GFLOPs 0 ({', '.join(uncounted)}): no matmul or convolution, not no work; FFTs, wavelet "
                     f"transforms without convolutions and elementwise updates are not counted, so compare these "
                     f"rows by seconds.")
    write_table_formats(table, stem, f"Compute cost of reconstruction, AF {acceleration}, {mask_type} masks "
                                     f"({devices}; per slice, "
                                     f"this run's test set and settings)", notes)
    return table
