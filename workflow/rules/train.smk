# Training: one rule for every model. Snakemake deletes declared outputs before a job runs, so resumable
# checkpoints live in results/checkpoints/<model> (not an output) and only the final safetensors is declared.


rule train:
    input:
        unpack(lambda w: TRAIN[w.model]["inputs"]),
    output:
        model_file("{model}"),
    log:
        f"{RESULTS}/logs/train_{{model}}.log",
    wildcard_constraints:
        model="[a-z0-9_]+",
    threads: workflow.cores
    params:
        inputs=lambda w: as_json(TRAIN[w.model]["inputs"]),
        hp=lambda w: as_json(TRAIN[w.model]["hp"]),
        masks=as_json(config["masks"]["train"]),
        ckpt=lambda w: f"{RESULTS}/checkpoints/{w.model}",
    shell:
        "{TRAIN_LAUNCHER} train {wildcards.model} --inputs {params.inputs} --out {output} --ckpt-dir {params.ckpt} "
        "--hp {params.hp} --masks {params.masks} --seed {SEED} --device {DEVICE} > {log} 2>&1"
