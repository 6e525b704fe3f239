# Training: one rule for every model and training seed. Snakemake deletes declared outputs before a job runs, so
# resumable checkpoints live in results/checkpoints/seed<k>/<model> (not an output); the final safetensors and its
# training curve (<model>.curve.csv: per-epoch training losses and validation numbers, see ldpm.train) are declared.


rule train:
    input:
        unpack(lambda w: for_job(TRAIN[w.model]["inputs"], w)),
        reads=lambda w: READS.get(w.model, []),
    output:
        weights=model_file("{model}"),
        curve=f"{RESULTS}/models/seed{{seed}}/{{model}}.curve.csv",
    log:
        f"{RESULTS}/logs/train_{{model}}_seed{{seed}}.log",
    benchmark:  # wall time, peak RSS, CPU time of the job: what SLURM sizes are read from
        f"{RESULTS}/benchmarks/train_{{model}}_seed{{seed}}.tsv"
    threads: workflow.cores
    resources:
        runtime=lambda w: TRAIN_RUNTIME_MIN.get(w.model, 60),  # minutes; used by the SLURM executor
    params:
        inputs=lambda w: as_json(for_job(TRAIN[w.model]["inputs"], w)),
        hp=lambda w: as_json(TRAIN[w.model]["hp"]),
        # the measurement training simulates: the mask distribution, its scale (data.normalise), the protocol
        masks=lambda w: as_json(train_masks(w.model)),
        trainer=lambda w: TRAIN[w.model].get("trainer", w.model),
        ckpt=lambda w: f"{RESULTS}/checkpoints/seed{w.seed}/{w.model}",
        val_slices=config["validation_slices"],
        seed=lambda w: int(w.seed),
        device=DEVICE,
        code=lambda w: trainer_code(w.model),  # this model's code only: another model's edit retrains nothing here
    conda:
        LDPM_ENV
    shell:
        job_stage(launcher=TRAIN_LAUNCHER) + "train {params.trainer} --inputs {params.inputs} --out "
        "{output.weights} "
        "--ckpt-dir {params.ckpt} --hp {params.hp} --masks {params.masks} --seed {params.seed} "
        "--device {params.device} --val-slices {params.val_slices} > {log} 2>&1"


# One training-curve figure per trained model (train losses and validation numbers vs step); report.smk puts the
# figures of the models this run trains into results/report.html.
rule training_curve:
    input:
        f"{RESULTS}/models/seed{{seed}}/{{model}}.curve.csv",
    output:
        report(f"{RESULTS}/figures/training/seed{{seed}}/{{model}}.png", caption="../report/training_curve.rst",
               category="Training", labels={"figure": "training curve", "model": "{model}", "seed": "{seed}"}),
    log:
        f"{RESULTS}/logs/training_curve_{{model}}_seed{{seed}}.log",
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.figures") + "training-curves --curve {input} --title {wildcards.model} --out {output} > "
        "{log} 2>&1"
