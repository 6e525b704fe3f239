# results/report.html: every table, figure and provenance audit of the run on one self-contained page (part of
# `rule all`). `snakemake --report results/snakemake_report.html` adds Snakemake's per-rule code, params and times.

REPORT_TABLES = [
    f"{RESULTS}/tables/{name}_af{af}.md"
    for af in AFS
    for name in ["table1", "table2", "table3", "stats", "compute", "ldpm_diagnostics"]
] + [f"{RESULTS}/tables/fig3_vae.csv"]
REPORT_FIGURES = [f"{RESULTS}/figures/fig2_af{af}.png" for af in AFS] + [f"{RESULTS}/figures/fig3.png"]
TARGETS.append(f"{RESULTS}/report.html")


rule html_report:
    input:
        tables=REPORT_TABLES,
        figures=REPORT_FIGURES,
        audits=expand(f"{RESULTS}/provenance/audit_af{{af}}.txt", af=AFS),
    output:
        f"{RESULTS}/report.html",
    log:
        f"{RESULTS}/logs/report.log",
    shell:
        "ldpm report --tables {input.tables} --figures {input.figures} --texts {input.audits} --out {output} "
        "> {log} 2>&1"
