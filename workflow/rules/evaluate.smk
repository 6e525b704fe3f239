# Reconstruction of the test set per (method, AF), metrics, tables.

RECON["zero_filled"] = {"weights": {}, "hp": {}}


rule reconstruct:
    input:
        unpack(lambda w: RECON[w.method]["weights"]),
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
        weights=lambda w: as_json(RECON[w.method]["weights"]),
        hp=lambda w: as_json(RECON[w.method]["hp"]),
    shell:
        "ldpm reconstruct {wildcards.method} --test-h5 {input.h5} --test-csv {input.csv} --masks {input.masks} "
        "--weights {params.weights} --hp {params.hp} --seed {SEED} --device {DEVICE} --out {output} > {log} 2>&1"


rule metrics:
    input:
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        recon=f"{RESULTS}/recon/{{method}}/af{{af}}.h5",
    output:
        volumes=f"{RESULTS}/metrics/{{method}}/af{{af}}_volumes.csv",
        slices=f"{RESULTS}/metrics/{{method}}/af{{af}}_slices.csv",
    log:
        f"{RESULTS}/logs/metrics_{{method}}_af{{af}}.log",
    shell:
        "ldpm metrics --test-h5 {input.h5} --test-csv {input.csv} --recon {input.recon} --method {wildcards.method} "
        "--acceleration {wildcards.af} --out-volumes {output.volumes} --out-slices {output.slices} > {log} 2>&1"


rule tables:
    input:
        lambda w: expand(f"{RESULTS}/metrics/{{method}}/af{w.af}_volumes.csv", method=config["methods"]),
    output:
        expand(f"{RESULTS}/tables/{{table}}_af{{{{af}}}}.{{ext}}", table=["table1", "table3"],
               ext=["csv", "md", "tex"]),
    log:
        f"{RESULTS}/logs/tables_af{{af}}.log",
    params:
        methods=as_json(config["methods"]),
        splits=as_json(config["test_splits"]),
    shell:
        "ldpm tables --metrics {input} --methods {params.methods} --test-splits {params.splits} "
        "--main-split {config[main_split]} --acceleration {wildcards.af} --out-dir {RESULTS}/tables > {log} 2>&1"


rule figure2:
    input:
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        recon=lambda w: expand(f"{RESULTS}/recon/{{method}}/af{w.af}.h5", method=config["methods"]),
    output:
        f"{RESULTS}/figures/fig2_af{{af}}.png",
    log:
        f"{RESULTS}/logs/figure2_af{{af}}.log",
    params:
        methods=" ".join(config["methods"]),
        split=as_json(config["test_splits"][config["main_split"]]),
    shell:
        "ldpm figure2 --test-h5 {input.h5} --test-csv {input.csv} --methods {params.methods} --recon {input.recon} "
        "--split-filter {params.split} --out {output} > {log} 2>&1"
