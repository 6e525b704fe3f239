SPLITS = ["train", "val", "test"]


rule embedded_data:
    output:
        directory(f"{RESULTS}/raw/embedded"),
    log:
        f"{RESULTS}/logs/embedded_data.log",
    params:
        gen=as_json(config["data"]["embedded"]),
        seed=SEED,
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.embedded") + "embedded-data --out {output} --params {params.gen} --seed {params.seed} "
        "> {log} 2>&1"


# Preprocessing runs as one job per shard of volumes (data.shard_size), so `--cores N` and SLURM run shards in
# parallel and a changed or added raw file reruns only its shard:
#   checkpoint index   raw files -> index.csv (header facts, sha256); a checkpoint, so that the shards are planned
#                      from the indexed volumes (the embedded files are named only once generated)
#   rule split         index.csv -> splits.csv: subject-level split (seeded) and shard of every volume, cheap
#   rule preprocess    one shard's volumes -> data/shards/<shard>.{h5,csv}
#   rule gather        splits.csv + shards -> data/{train,val,test}.{h5,csv}
# A shard is a run of consecutive volumes (index order) named after its first volume, with content-defined
# boundaries (ldpm.data.preprocess.plan_shards): an added file joins (or starts) one shard, the others keep their
# names and members. A shard job takes index.csv as ancient input (a rewritten index reruns no shard by itself)
# and reruns when the sha256 of its own index rows (a param), its set of raw files, or a raw file's mtime changes.


checkpoint index:
    input:
        raw_inputs(),
    output:
        f"{RESULTS}/data/index.csv",
    log:
        f"{RESULTS}/logs/index.log",
    benchmark:
        f"{RESULTS}/benchmarks/index.tsv"
    params:
        datasets=as_json(raw_datasets()),
        extra=as_json(config["data"]["extra_acquisitions"]),
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.preprocess") + "index --datasets {params.datasets} --extra-acquisitions {params.extra} "
        "--out {output} > {log} 2>&1"


rule split:
    input:
        f"{RESULTS}/data/index.csv",
    output:
        f"{RESULTS}/data/splits.csv",
    log:
        f"{RESULTS}/logs/split.log",
    params:
        split=as_json(config["data"]["split"] | {"shard_size": config["data"]["shard_size"]}),
        seed=SEED,
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.preprocess") + "split --index {input} --params {params.split} --seed {params.seed} "
        "--out {output} > {log} 2>&1"


rule preprocess:
    input:
        index=ancient(f"{RESULTS}/data/index.csv"),
        raw=shard_raw,
    output:
        h5=f"{RESULTS}/data/shards/{{shard}}.h5",
        csv=f"{RESULTS}/data/shards/{{shard}}.csv",
    log:
        f"{RESULTS}/logs/preprocess/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/preprocess/{{shard}}.tsv"
    wildcard_constraints:
        shard=r"[^/]+",
    params:
        pre=as_json({k: config["data"][k] for k in ["crop_size", "image_size", "drop_last_slices"]}
                    | {"dataset_crop": {name: spec["crop_size"] for name, spec in config["data"]["datasets"].items()
                                        if "crop_size" in spec}}),
        volumes=lambda w: as_json(shard_plan()[w.shard][0]),
        rows=lambda w: shard_plan()[w.shard][2],
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.preprocess") + "preprocess-shard --index {input.index} --volumes {params.volumes} "
        "--rows-sha256 {params.rows} --params {params.pre} --out-h5 {output.h5:q} --out-csv {output.csv:q} "
        "> {log:q} 2>&1"


rule gather:
    input:
        splits=f"{RESULTS}/data/splits.csv",
        shards=lambda w: [f"{RESULTS}/data/shards/{shard}.{ext}" for shard in shard_plan() for ext in ("h5", "csv")],
    output:
        expand(f"{RESULTS}/data/{{split}}.{{ext}}", split=SPLITS, ext=["h5", "csv"]),
    log:
        f"{RESULTS}/logs/gather.log",
    benchmark:
        f"{RESULTS}/benchmarks/gather.tsv"
    params:
        out_dir=lambda w, output: str(Path(output[0]).parent),
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.preprocess") + "gather --splits {input.splits} --out-dir {params.out_dir} > {log} 2>&1"


localrules: split


rule masks:
    input:
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
    output:
        npz=f"{RESULTS}/masks/{{mask}}_af{{af}}.npz",
        real_af=f"{RESULTS}/masks/{{mask}}_af{{af}}.csv",  # the real acceleration of every saved mask
    log:
        f"{RESULTS}/logs/masks_{{mask}}_af{{af}}.log",
    params:
        cf=lambda w: config["masks"]["center_fractions"][int(w.af)],
        seed=SEED,
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.masks") + "masks --test-h5 {input.h5} --test-csv {input.csv} --mask-type {wildcards.mask} "
        "--acceleration {wildcards.af} --center-fraction {params.cf} --seed {params.seed} --out {output.npz} "
        "--out-csv {output.real_af} > {log} 2>&1"
