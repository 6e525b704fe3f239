# results/report.html: every table, figure and provenance audit of the run on one self-contained page (part of
# `rule all`). `snakemake --report results/snakemake_report.html` adds Snakemake's per-rule code, params and times.

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


rule html_report:
    input:
        tables=REPORT_TABLES,
        figures=REPORT_FIGURES,
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
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.report") + "report --tables {input.tables} --figures {input.figures} --texts "
        "{input.audits} "
        "--splits {input.splits} --source {params.source} --table3 {input.table3} --main-split {params.main_split} "
        "--ood-splits {params.ood} --stand-in {params.stand_in} --out {output} > {log} 2>&1"
