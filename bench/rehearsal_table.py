"""Markdown table of a finished rehearsal's per-job benchmarks (results/benchmarks/*.tsv, Snakemake's `benchmark:`):
wall time and peak RSS per job, largest RSS first.

    python bench/rehearsal_table.py WORKDIR [--log WORKDIR/../smk.log]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def table(workdir: Path) -> str:
    rows = []
    for tsv in sorted((workdir / "results" / "benchmarks").glob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        rows.append({"job": tsv.stem, "wall (s)": float(frame["s"].iloc[0]),
                     "peak RSS (GiB)": float(frame["max_rss"].iloc[0]) / 1024})
    frame = pd.DataFrame(rows).sort_values("peak RSS (GiB)", ascending=False)
    return frame.to_markdown(index=False, floatfmt=(None, ".0f", ".1f"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    print(table(parser.parse_args().workdir))
