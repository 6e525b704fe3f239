# Training stages. Snakemake deletes declared outputs before a job runs, so resumable checkpoints live in a
# directory passed as a param (results/checkpoints/<model>) and only the final safetensors weights are outputs.


rule train_unet:
    input:
        f"{RESULTS}/data/train.h5",
    output:
        f"{RESULTS}/models/unet.safetensors",
    log:
        f"{RESULTS}/logs/train_unet.log",
    threads: workflow.cores
    params:
        hp=as_json(config["unet"]),
        masks=as_json(config["masks"]["train"]),
        ckpt=f"{RESULTS}/checkpoints/unet",
    shell:
        "ldpm train unet --train-h5 {input} --out {output} --ckpt-dir {params.ckpt} --hp {params.hp} "
        "--masks {params.masks} --seed {SEED} --device {DEVICE} > {log} 2>&1"
