# results/report.html: every table, figure and provenance audit of the run on one self-contained page (part of
# `rule all`), opening with a run summary and the headline forest plots. `snakemake --report
# results/snakemake_report.html` adds Snakemake's per-rule code, params and times.

PROTOCOLS = [f"{measurement}_{mask}_af{af}" for measurement in MEASUREMENTS for mask in MASK_TYPES for af in AFS]
# With both measurements, the protocol gap (each method under magnitude beside multicoil) leads the tables.
GAPS = [f"{mask}_af{af}" for mask in MASK_TYPES for af in AFS] if MULTICOIL and "magnitude" in MEASUREMENTS else []
REPORT_TABLES = [f"{RESULTS}/tables/protocol_gap_{p}.md" for p in GAPS]
REPORT_TABLES += [f"{RESULTS}/tables/{name}_{p}.md" for p in PROTOCOLS for name in ["table1", "table3", "stats",
                                                                                     "compute"]]
# Table II and the LDPM diagnostics: the paper's magnitude measurement
REPORT_TABLES += [f"{RESULTS}/tables/{name}_{mask}_af{af}.md" for mask in MASK_TYPES for af in AFS
                  for name in ["table2", "ldpm_diagnostics"]] + [f"{RESULTS}/tables/fig3_vae.csv"]
REPORT_FIGURES = [f"{RESULTS}/figures/protocol_gap_{p}.png" for p in GAPS]
REPORT_FIGURES += [f"{RESULTS}/figures/fig2_{p}.png" for p in PROTOCOLS]
REPORT_FIGURES += [f"{RESULTS}/figures/fig3.png"]
TARGETS.append(f"{RESULTS}/report.html")


REPORT_FIGURES += [f"{RESULTS}/figures/training/seed{FIRST_SEED}/{model}.png" for model in trained_models()]


# The headline of the report: per protocol, each method's difference to LDPM with its bootstrap CI (PSNR, SSIM),
# significance after Holm marked.
rule forest_plot:
    input:
        f"{RESULTS}/tables/stats_{PROTOCOL}.csv",
    output:
        report(f"{RESULTS}/figures/forest_{PROTOCOL}.png", caption="../report/forest.rst", category="Figures",
               labels={"figure": "Difference to LDPM", "measurement": "{measurement}", "masks": "{mask}",
                       "AF": "{af}"}),
    log:
        f"{RESULTS}/logs/forest_{PROTOCOL}.log",
    params:
        confidence=EVAL["confidence"],
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.figures") + "forest-plot --stats {input} --mask-type {wildcards.mask} --acceleration "
        "{wildcards.af} --measurement {wildcards.measurement} --confidence {params.confidence} --out {output} > "
        "{log} 2>&1"


# With both measurements: each method's PSNR / SSIM under magnitude beside multicoil, the paired difference with its
# CI, and the LDPM-vs-method statistics of each (ldpm.evaluate.gap).
rule protocol_gap:
    input:
        metrics=lambda w: [f for m in ("magnitude", "multicoil") for f in volume_metrics(w, measurement=m)],
        stats_magnitude=f"{RESULTS}/tables/stats_magnitude_{{mask}}_af{{af}}.csv",
        stats_multicoil=f"{RESULTS}/tables/stats_multicoil_{{mask}}_af{{af}}.csv",
    output:
        csv=f"{RESULTS}/tables/protocol_gap_{{mask}}_af{{af}}.csv",
        md=report(f"{RESULTS}/tables/protocol_gap_{{mask}}_af{{af}}.md", caption="../report/gap.rst",
                  category="Tables", labels={"table": "Protocol gap", "masks": "{mask}", "AF": "{af}"}),
        png=report(f"{RESULTS}/figures/protocol_gap_{{mask}}_af{{af}}.png", caption="../report/gap.rst",
                   category="Figures", labels={"figure": "Protocol gap", "masks": "{mask}", "AF": "{af}"}),
    log:
        f"{RESULTS}/logs/protocol_gap_{{mask}}_af{{af}}.log",
    params:
        methods=as_json(config["methods"]),
        split=as_json(MAIN_FILTER),
        n_boot=EVAL["bootstrap_samples"],
        confidence=EVAL["confidence"],
        seed=SEED,
        stem=lambda w: f"{RESULTS}/tables/protocol_gap_{w.mask}_af{w.af}",
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.gap") + "gap --metrics {input.metrics} --stats-magnitude {input.stats_magnitude} "
        "--stats-multicoil {input.stats_multicoil} --methods {params.methods} --split-filter {params.split} "
        "--mask-type {wildcards.mask} --acceleration {wildcards.af} --n-boot {params.n_boot} "
        "--confidence {params.confidence} --seed {params.seed} --out-stem {params.stem} --out-png {output.png} "
        "> {log} 2>&1"


rule html_report:
    input:
        tables=REPORT_TABLES,
        figures=REPORT_FIGURES,
        headline=[f"{RESULTS}/figures/forest_{p}.png" for p in PROTOCOLS],
        stats=[f"{RESULTS}/tables/stats_{p}.csv" for p in PROTOCOLS],
        audits=[f"{RESULTS}/provenance/audit_{p}.txt" for p in PROTOCOLS],
        splits=expand(f"{RESULTS}/data/{{split}}.csv", split=["train", "val", "test"]),
        table3=[f"{RESULTS}/tables/table3_{p}.csv" for p in PROTOCOLS],
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
