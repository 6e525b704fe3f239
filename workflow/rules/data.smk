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
#   checkpoint index   one dataset's raw files -> index/<dataset>.csv (header facts, sha256); a checkpoint, so that
#                      the shards are planned from the indexed volumes (the embedded files are named only once
#                      generated); one per dataset, so that a new or changed dataset leaves the others' plans be
#   rule split         index files -> splits.csv: subject-level split (seeded) and shard of every volume, cheap
#   rule preprocess    one shard's volumes -> data/shards/<dataset>/<shard>.{h5,csv}
#   rule gather        splits.csv + the split's shards -> data/<split>.{h5,csv}, one job per split
# A shard is a run of consecutive volumes (index order) of one dataset, named after its first volume, with
# content-defined boundaries (ldpm.data.preprocess.plan_shards): an added file joins (or starts) one shard, the
# others keep their names and members. A shard job takes its index file as ancient input (a rewritten index reruns
# no shard by itself) and reruns when the sha256 of its own index rows (a param), its set of raw files, a raw
# file's mtime or its own dataset's settings change. A gather job takes splits.csv as ancient input too and reruns
# when its split's members (a param) or shards change: a test-only dataset never rewrites train.h5 or val.h5.


checkpoint index:
    input:
        lambda w: raw_inputs(w.dataset),
    output:
        f"{RESULTS}/data/index/{{dataset}}.csv",
    log:
        f"{RESULTS}/logs/index_{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/index_{{dataset}}.tsv"
    wildcard_constraints:
        dataset="|".join(map(re.escape, DATASETS)),
    params:
        dataset=lambda w: as_json(index_spec(w.dataset)),
        extra=as_json(config["data"]["extra_acquisitions"]),
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.preprocess") + "index --datasets {params.dataset} --extra-acquisitions {params.extra} "
        "--out {output} > {log} 2>&1"


rule split:
    input:
        [index_file(name) for name in DATASETS],
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
        index=lambda w: ancient(index_file(w.dataset)),
        raw=shard_raw,
    output:
        h5=f"{RESULTS}/data/shards/{{dataset}}/{{shard}}.h5",
        csv=f"{RESULTS}/data/shards/{{dataset}}/{{shard}}.csv",
    log:
        f"{RESULTS}/logs/preprocess/{{dataset}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/preprocess/{{dataset}}/{{shard}}.tsv"
    wildcard_constraints:
        dataset="|".join(map(re.escape, DATASETS)),
        shard=r"[^/]+",
    params:
        pre=lambda w: as_json(shard_settings(w.dataset)),
        volumes=lambda w: as_json(shard_plan(w.dataset)[w.shard][0]),
        rows=lambda w: shard_plan(w.dataset)[w.shard][2],
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.preprocess") + "preprocess-shard --index {input.index} --volumes {params.volumes} "
        "--rows-sha256 {params.rows} --params {params.pre} --out-h5 {output.h5:q} --out-csv {output.csv:q} "
        "> {log:q} 2>&1"


rule gather:
    input:
        splits=ancient(f"{RESULTS}/data/splits.csv"),
        shards=split_shard_files,
    output:
        h5=f"{RESULTS}/data/{{split}}.h5",
        csv=f"{RESULTS}/data/{{split}}.csv",
    log:
        f"{RESULTS}/logs/gather_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/gather_{{split}}.tsv"
    wildcard_constraints:
        split="|".join(SPLITS),
    params:
        members=split_members_sha256,
        out_dir=lambda w, output: str(Path(output.h5).parent),
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.preprocess") + "gather --splits {input.splits} --split {wildcards.split} --out-dir "
        "{params.out_dir} > {log} 2>&1"


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
        per=config["masks"]["per"],
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.data.masks") + "masks --test-h5 {input.h5} --test-csv {input.csv} --mask-type {wildcards.mask} "
        "--acceleration {wildcards.af} --center-fraction {params.cf} --seed {params.seed} --per {params.per} "
        "--out {output.npz} --out-csv {output.real_af} > {log} 2>&1"
