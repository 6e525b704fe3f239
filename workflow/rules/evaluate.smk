# Reconstruction of the test set per (method, AF), metrics, perceptual metrics, tables, statistics, Fig 2,
# provenance audits. Outputs marked report(...) appear in `snakemake --report results/snakemake_report.html`.
import hashlib
import os

from ldpm.evaluate.perceptual import present_weights

RECON["zero_filled"] = {"weights": {}, "hp": {}}
EVAL = config["evaluation"]
WEIGHTS_DIR = shlex.quote(EVAL["weights_dir"])
AFS = config["masks"]["accelerations"]

# Every `ldpm` stage copies this hash of the validated config into its provenance sidecars. It reaches the jobs
# through the environment, not params, so it never triggers a rerun by itself.
os.environ["LDPM_CONFIG_SHA256"] = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()

TARGETS += expand(f"{RESULTS}/tables/stats_af{{af}}.{{ext}}", af=AFS, ext=["csv", "md"])
TARGETS += expand(f"{RESULTS}/provenance/audit_af{{af}}.txt", af=AFS)


def recon_files(af):
    return expand(f"{RESULTS}/recon/{{method}}/af{af}.h5", method=config["methods"])


def volume_metrics(af):
    return expand(f"{RESULTS}/metrics/{{method}}/af{af}_volumes.csv", method=config["methods"])


def caption(name):
    return f"../report/{name}.rst"


rule reconstruct:
    input:
        unpack(lambda w: recon_weights(w.method, w.af)),
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        masks=f"{RESULTS}/masks/af{{af}}.npz",
    output:
        f"{RESULTS}/recon/{{method}}/af{{af}}.h5",
    log:
        f"{RESULTS}/logs/reconstruct_{{method}}_af{{af}}.log",
    wildcard_constraints:
        method="[a-z0-9_]+",
    threads: workflow.cores
    params:
        weights=lambda w: as_json(recon_weights(w.method, w.af)),
        hp=lambda w: as_json(RECON[w.method]["hp"]),
    shell:
        "ldpm reconstruct {wildcards.method} --test-h5 {input.h5} --test-csv {input.csv} --masks {input.masks} "
        "--weights {params.weights} --hp {params.hp} --seed {SEED} --device {DEVICE} --out {output} > {log} 2>&1"


rule metrics:
    input:
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        recon=f"{RESULTS}/recon/{{method}}/af{{af}}.h5",
        masks=f"{RESULTS}/masks/af{{af}}.npz",
    output:
        volumes=f"{RESULTS}/metrics/{{method}}/af{{af}}_volumes.csv",
        slices=f"{RESULTS}/metrics/{{method}}/af{{af}}_slices.csv",
    log:
        f"{RESULTS}/logs/metrics_{{method}}_af{{af}}.log",
    shell:
        "ldpm metrics --test-h5 {input.h5} --test-csv {input.csv} --recon {input.recon} --masks {input.masks} "
        "--method {wildcards.method} --acceleration {wildcards.af} --out-volumes {output.volumes} "
        "--out-slices {output.slices} > {log} 2>&1"


rule perceptual:
    input:
        # Backbone files present now are inputs: adding one later reruns this rule and fills the n/a cells.
        weights=present_weights(EVAL["weights_dir"], EVAL["use_hub_cache"]),
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        recon=lambda w: recon_files(w.af),
    output:
        f"{RESULTS}/metrics/perceptual_af{{af}}.csv",
    log:
        f"{RESULTS}/logs/perceptual_af{{af}}.log",
    threads: workflow.cores
    params:
        methods=" ".join(config["methods"]),
        split=as_json(config["test_splits"][config["main_split"]]),
        hub="" if EVAL["use_hub_cache"] else "--no-hub-cache",
    shell:
        "ldpm perceptual --test-h5 {input.h5} --test-csv {input.csv} --methods {params.methods} "
        "--recon {input.recon} --split-filter {params.split} --split-name {MAIN_SPLIT} "
        "--weights-dir {WEIGHTS_DIR} {params.hub} --seed {SEED} --device {DEVICE} --out {output} > {log} 2>&1"


rule tables:
    input:
        metrics=lambda w: volume_metrics(w.af),
        perceptual=f"{RESULTS}/metrics/perceptual_af{{af}}.csv",
        recon=lambda w: recon_files(w.af),
    output:
        table1=report(f"{RESULTS}/tables/table1_af{{af}}.csv", caption=caption("table1"), category="Tables",
                      labels={"table": "Table I", "AF": "{af}"}),
        table1_md=report(f"{RESULTS}/tables/table1_af{{af}}.md", caption=caption("table1"), category="Tables",
                         labels={"table": "Table I (md, with footnotes)", "AF": "{af}"}),
        table3=report(f"{RESULTS}/tables/table3_af{{af}}.csv", caption=caption("table3"), category="Tables",
                      labels={"table": "Table III", "AF": "{af}"}),
        compute=report(f"{RESULTS}/tables/compute_af{{af}}.md", caption=caption("compute"), category="Tables",
                       labels={"table": "Compute cost", "AF": "{af}"}),
        other=expand(f"{RESULTS}/tables/{{name}}_af{{{{af}}}}.{{ext}}", name=["table1", "table3"], ext=["tex"])
        + expand(f"{RESULTS}/tables/compute_af{{{{af}}}}.{{ext}}", ext=["csv", "tex"])
        + [f"{RESULTS}/tables/table3_af{{af}}.md"],
    log:
        f"{RESULTS}/logs/tables_af{{af}}.log",
    params:
        methods=as_json(config["methods"]),
        splits=as_json(config["test_splits"]),
        notes=lambda w: as_json(TABLE1_NOTES),
    shell:
        "ldpm tables --metrics {input.metrics} --perceptual {input.perceptual} --methods {params.methods} "
        "--test-splits {params.splits} --main-split {MAIN_SPLIT} --acceleration {wildcards.af} "
        "--recon {input.recon} --notes {params.notes} --out-dir {RESULTS}/tables > {log} 2>&1"


rule stats:
    input:
        lambda w: volume_metrics(w.af),
    output:
        csv=report(f"{RESULTS}/tables/stats_af{{af}}.csv", caption=caption("stats"), category="Tables",
                   labels={"table": "Statistics", "AF": "{af}"}),
        md=report(f"{RESULTS}/tables/stats_af{{af}}.md", caption=caption("stats"), category="Tables",
                  labels={"table": "Statistics (md, with tests)", "AF": "{af}"}),
    log:
        f"{RESULTS}/logs/stats_af{{af}}.log",
    params:
        methods=as_json(config["methods"]),
        split=as_json(config["test_splits"][config["main_split"]]),
    shell:
        "ldpm stats --metrics {input} --methods {params.methods} --split-filter {params.split} "
        "--acceleration {wildcards.af} --n-boot {EVAL[bootstrap_samples]} --confidence {EVAL[confidence]} "
        "--seed {SEED} --out-stem {RESULTS}/tables/stats_af{wildcards.af} > {log} 2>&1"


rule figure2:
    input:
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        zero_filled=f"{RESULTS}/recon/zero_filled/af{{af}}.h5",
        recon=lambda w: recon_files(w.af),
    output:
        report(f"{RESULTS}/figures/fig2_af{{af}}.png", caption=caption("figure2"), category="Figures",
               labels={"figure": "Fig 2", "AF": "{af}"}),
    log:
        f"{RESULTS}/logs/figure2_af{{af}}.log",
    params:
        methods=" ".join(config["methods"]),
        split=as_json(config["test_splits"][config["main_split"]]),
    shell:
        "ldpm figure2 --test-h5 {input.h5} --test-csv {input.csv} --methods {params.methods} --recon {input.recon} "
        "--zero-filled {input.zero_filled} --split-filter {params.split} --n-examples {EVAL[figure_examples]} "
        "--out {output} > {log} 2>&1"


rule audit:
    input:
        table1=f"{RESULTS}/tables/table1_af{{af}}.csv",
        table3=f"{RESULTS}/tables/table3_af{{af}}.csv",
        stats=f"{RESULTS}/tables/stats_af{{af}}.csv",
        figure=f"{RESULTS}/figures/fig2_af{{af}}.png",
    output:
        report(f"{RESULTS}/provenance/audit_af{{af}}.txt", caption=caption("audit"), category="Provenance",
               labels={"audit": "tables and Fig 2", "AF": "{af}"}),
    log:
        f"{RESULTS}/logs/audit_af{{af}}.log",
    shell:
        "ldpm audit {input.table1} {input.table3} {input.stats} {input.figure} --out {output} > {log} 2>&1"
