# results/report.html: every table, figure and provenance audit of the run on one self-contained page (part of
# `rule all`), opening with a run summary and the headline forest plots. `snakemake --report
# results/snakemake_report.html` adds Snakemake's per-rule code, params and times.

REPORT_TABLES = [
    f"{RESULTS}/tables/{name}_{mask}_af{af}.md"
    for mask in MASK_TYPES
    for af in AFS
    for name in ["table1", "table2", "table3", "stats", "compute", "ldpm_diagnostics"]
] + [f"{RESULTS}/tables/fig3_vae.csv"]
REPORT_FIGURES = [f"{RESULTS}/figures/fig2_{mask}_af{af}.png" for mask in MASK_TYPES for af in AFS]
REPORT_FIGURES += [f"{RESULTS}/figures/fig3.png"]
TARGETS.append(f"{RESULTS}/report.html")


REPORT_FIGURES += [f"{RESULTS}/figures/training/seed{FIRST_SEED}/{model}.png" for model in trained_models()]


# The headline of the report: per protocol, each method's difference to LDPM with its bootstrap CI (PSNR, SSIM),
# significance after Holm marked.
rule forest_plot:
    input:
        f"{RESULTS}/tables/stats_{{mask}}_af{{af}}.csv",
    output:
        report(f"{RESULTS}/figures/forest_{{mask}}_af{{af}}.png", caption="../report/forest.rst", category="Figures",
               labels={"figure": "Difference to LDPM", "masks": "{mask}", "AF": "{af}"}),
    log:
        f"{RESULTS}/logs/forest_{{mask}}_af{{af}}.log",
    params:
        confidence=EVAL["confidence"],
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.figures") + "forest-plot --stats {input} --mask-type {wildcards.mask} --acceleration "
        "{wildcards.af} --confidence {params.confidence} --out {output} > {log} 2>&1"


rule html_report:
    input:
        tables=REPORT_TABLES,
        figures=REPORT_FIGURES,
        headline=expand(f"{RESULTS}/figures/forest_{{mask}}_af{{af}}.png", mask=MASK_TYPES, af=AFS),
        stats=expand(f"{RESULTS}/tables/stats_{{mask}}_af{{af}}.csv", mask=MASK_TYPES, af=AFS),
        audits=expand(f"{RESULTS}/provenance/audit_{{mask}}_af{{af}}.txt", mask=MASK_TYPES, af=AFS),
        splits=expand(f"{RESULTS}/data/{{split}}.csv", split=["train", "val", "test"]),
        table3=expand(f"{RESULTS}/tables/table3_{{mask}}_af{{af}}.csv", mask=MASK_TYPES, af=AFS),
    output:
        report(f"{RESULTS}/report.html", caption="../report/report.rst", category="Report",
               labels={"page": "results/report.html"}),
    log:
        f"{RESULTS}/logs/report.log",
    params:
        source=config["data"]["source"],
        main_split=MAIN_SPLIT,
        ood=as_json(ood_columns()),
        stand_in=as_json(STAND_IN),
        # the run summary: which config file(s) this run read, and its seeds
        config_files=as_json([str(f) for f in workflow.configfiles]),
        seed=SEED,
        training_seeds=as_json(SEEDS),
        # Descriptive only (the summary's wall time): read through a path, not declared as inputs, since the
        # benchmark files are written by the jobs upstream and change on every rerun of one of them.
        benchmarks=f"{RESULTS}/benchmarks",
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.report") + "report --tables {input.tables} --figures {input.figures} --texts "
        "{input.audits} --headline {input.headline} --stats {input.stats} "
        "--splits {input.splits} --source {params.source} --table3 {input.table3} --main-split {params.main_split} "
        "--ood-splits {params.ood} --stand-in {params.stand_in} --config-files {params.config_files} "
        "--seed {params.seed} --training-seeds {params.training_seeds} --benchmarks {params.benchmarks} "
        "--out {output} > {log} 2>&1"
