SPLITS = ["train", "val", "test"]


rule embedded_data:
    output:
        directory(f"{RESULTS}/raw/embedded"),
    log:
        f"{RESULTS}/logs/embedded_data.log",
    params:
        gen=as_json(config["data"]["embedded"]),
    shell:
        "ldpm embedded-data --out {output} --params {params.gen} --seed {SEED} > {log} 2>&1"


rule index:
    input:
        [f"{RESULTS}/raw/embedded"] if config["data"]["source"] == "embedded" else [],
    output:
        f"{RESULTS}/data/index.csv",
    log:
        f"{RESULTS}/logs/index.log",
    params:
        datasets=as_json(raw_datasets()),
        extra=as_json(config["data"]["extra_acquisitions"]),
    shell:
        "ldpm index --datasets {params.datasets} --extra-acquisitions {params.extra} --out {output} > {log} 2>&1"


rule preprocess:
    input:
        f"{RESULTS}/data/index.csv",
    output:
        expand(f"{RESULTS}/data/{{split}}.{{ext}}", split=SPLITS, ext=["h5", "csv"]),
    log:
        f"{RESULTS}/logs/preprocess.log",
    params:
        pre=as_json({k: config["data"][k] for k in ["crop_size", "image_size", "drop_last_slices"]}
                    | config["data"]["split"]),
    shell:
        "ldpm preprocess --index {input} --out-dir {RESULTS}/data --params {params.pre} --seed {SEED} > {log} 2>&1"


rule masks:
    input:
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
    output:
        f"{RESULTS}/masks/af{{af}}.npz",
    log:
        f"{RESULTS}/logs/masks_af{{af}}.log",
    params:
        cf=lambda w: config["masks"]["center_fractions"][int(w.af)],
    shell:
        "ldpm masks --test-h5 {input.h5} --test-csv {input.csv} --acceleration {wildcards.af} "
        "--center-fraction {params.cf} --seed {SEED} --out {output} > {log} 2>&1"
