"""The record of a finished paper-path rehearsal (bench/rehearsal.sh --record): stage times (times.tsv) and, per job,
wall time and peak RSS from Snakemake's `benchmark:` files, as bench/rehearsal-MODE.md and
bench/rehearsal-MODE-peaks.csv (the peaks tests/test_rehearsal.py checks profiles/slurm's mem_mb against).

    python bench/rehearsal_table.py WORKDIR --mode cpu|gpu [--out bench] [--note "what else ran on the machine"]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
from pathlib import Path

import pandas as pd

# The rules with a `benchmark:` directive; a job's file name starts with its rule's name (longest match wins).
RULES = ["index", "preprocess", "gather", "train", "reconstruct", "perceptual", "ldpm_tune_sampler",
         "ldpm_diagnostics", "ldpm_figure3"]


def rule_of(job: str) -> str:
    matches = [r for r in RULES if job == r or job.startswith(f"{r}_")]
    if not matches:
        raise ValueError(f"benchmark file {job}.tsv: no rule in {RULES} is a prefix; add the rule to RULES")
    return max(matches, key=len)


def peaks(workdir: Path) -> pd.DataFrame:
    """One row per benchmarked job of every run under workdir (paper, official, ...)."""
    rows = []
    for run in sorted(workdir.glob("*/results/benchmarks")):
        for tsv in sorted(run.rglob("*.tsv")):  # preprocess/<shard>.tsv: one per shard job
            frame, job = pd.read_csv(tsv, sep="\t"), str(tsv.relative_to(run).with_suffix(""))
            rows.append({"run": run.parents[1].name, "rule": rule_of(job.replace("/", "_")), "job": job,
                         "wall_s": round(float(frame["s"].iloc[0]), 1),
                         "max_rss_mib": round(float(frame["max_rss"].iloc[0]))})
    if not rows:
        raise SystemExit(f"rehearsal_table: error: no benchmark files under {workdir}/*/results/benchmarks; "
                         "run bench/rehearsal.sh first")
    return pd.DataFrame(rows).sort_values("max_rss_mib", ascending=False)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    try:
        gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        gpus = "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB, {gpus}"


def record(workdir: Path, mode: str, note: str = "") -> tuple[str, pd.DataFrame]:
    times = pd.read_csv(workdir / "times.tsv", sep="\t", names=["stage", "s"])
    table = peaks(workdir)
    shown = table.assign(**{"peak RSS (GiB)": table["max_rss_mib"] / 1024})[["run", "job", "wall_s", "peak RSS (GiB)"]]
    lines = [f"# Paper-path rehearsal, {mode} ({datetime.date.today()})", "",
             f"Machine: {machine()}. Written by `bench/rehearsal.sh {mode} WORKDIR --record`; nothing here is a "
             "result (stand-in weights and data), only what the paper path costs." + (f" {note}" if note else ""), "",
             "| stage | wall (min) |", "|---|---|"]
    lines += [f"| {r.stage} | {r.s / 60:.1f} |" for r in times.itertuples()]
    by_rule = table.groupby("rule")["wall_s"].sum().sort_values(ascending=False) / 60
    lines += [f"| **total** | **{times['s'].sum() / 60:.1f}** |", "",
              "Benchmarked wall time per rule (min, all runs): "
              + ", ".join(f"{rule} {m:.1f}" for rule, m in by_rule.items() if m >= 0.05) + ".", "",
              "Per job (Snakemake `benchmark:`; rules without one are not listed), largest peak RSS first:", "",
              shown.to_markdown(index=False, floatfmt=(None, None, ".0f", ".1f")), ""]
    return "\n".join(lines), table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--mode", choices=["cpu", "gpu"], required=True)
    parser.add_argument("--out", type=Path, help="write rehearsal-MODE.md and rehearsal-MODE-peaks.csv here")
    parser.add_argument("--note", default="", help="a sentence on the conditions (e.g. other work on the machine)")
    args = parser.parse_args()
    text, table = record(args.workdir, args.mode, args.note)
    print(text)
    if args.out:
        (args.out / f"rehearsal-{args.mode}.md").write_text(text)
        table.to_csv(args.out / f"rehearsal-{args.mode}-peaks.csv", index=False)
