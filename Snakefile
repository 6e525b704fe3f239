# LDPM benchmark pipeline. `snakemake --cores all` regenerates the tables from raw data.
# Config: config.yaml (embedded default) or --configfile configs/paper.yaml. Every rule calls one `ldpm` stage.

# A --configfile on the command line replaces config.yaml instead of being deep-merged into it, so a
# config never inherits stray keys (e.g. test splits) from another.
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


# `snakemake --report results/snakemake_report.html`: tables, figures, provenance audits with captions from
# workflow/report/.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/ldpm.smk"
include: "workflow/rules/report.smk"


# Cheap rules run on the submit host when a cluster executor is used (profiles/slurm).
localrules: all, masks, tables, figure2, stats, audit, html_report


rule all:
    input:
        expand("results/tables/{table}_af{af}.{ext}", table=["table1", "table3"],
               af=config["masks"]["accelerations"], ext=["csv", "md", "tex"]),
        expand("results/figures/fig2_af{af}.png", af=config["masks"]["accelerations"]),
        TARGETS,
