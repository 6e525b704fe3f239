# LDPM benchmark pipeline. `snakemake --cores all` regenerates the tables from raw data.
# Config: config.yaml (embedded default) or --configfile configs/paper.yaml. Every rule calls one `ldpm` stage.

import shlex
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# A --configfile on the command line replaces config.yaml instead of being deep-merged into it, so a
# config never inherits stray keys (e.g. test splits) from another.
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


# Software: with `--sdm conda` every job runs in envs/ldpm.yaml (third-party packages pinned to the lock; each rule's
# `conda: LDPM_ENV`); the rules call `python -m ldpm` with this checkout's src/ first on PYTHONPATH, so the conda
# environment and the venv of envs/install.sh run the same ldpm code.
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(str(Path(workflow.basedir) / 'src'))}"
             "${{PYTHONPATH:+:$PYTHONPATH}}; ")  # doubled braces: Snakemake formats the prefix


# `snakemake --report results/snakemake_report.html`: tables, figures, provenance audits with captions from
# workflow/report/.
report: "workflow/report/workflow.rst"


# File names are built from these wildcards; the constraints keep "{mask}_af{af}" and "{method}" unambiguous.
wildcard_constraints:
    measurement="magnitude|multicoil",
    mask="random|equispaced",
    af="[0-9]+",
    method="[a-z0-9_]+",
    model="[a-z0-9_]+",
    seed="[0-9]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/ldpm.smk"
include: "workflow/rules/report.smk"


# Cheap rules run on the submit host when a cluster executor is used (profiles/slurm).
localrules: all, masks, tables, figure2, forest_plot, stats, audit, protocol_gap, html_report


rule all:
    input:
        expand("results/tables/{table}_{measurement}_{mask}_af{af}.{ext}", table=["table1", "table3"],
               measurement=MEASUREMENTS, mask=MASK_TYPES, af=AFS, ext=["csv", "md", "tex"]),
        expand("results/figures/fig2_{measurement}_{mask}_af{af}.png", measurement=MEASUREMENTS, mask=MASK_TYPES,
               af=AFS),
        TARGETS,
