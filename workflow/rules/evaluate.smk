# Reconstruction of the test set per (method, training seed, mask type, AF), metrics, perceptual metrics, tables,
# statistics, Fig 2, provenance audits. Outputs marked report(...) appear in `snakemake --report`.
# Every value a job depends on reaches its shell through input: or params:, so Snakemake reruns what changed.
from ldpm.evaluate.perceptual import present_weights
from ldpm.provenance import export_config_hash

RECON["zero_filled"] = {"weights": {}, "hp": {}}
EVAL = config["evaluation"]
MAIN_FILTER = config["test_splits"][config["main_split"]]

# Every `ldpm` stage copies this hash of the validated config into its provenance records (through the
# environment, so it never triggers a rerun by itself).
export_config_hash(config)

TARGETS += expand(f"{RESULTS}/tables/stats_{PROTOCOL}.{{ext}}", measurement=MEASUREMENTS, mask=MASK_TYPES, af=AFS,
                  ext=["csv", "md"])
TARGETS += expand(f"{RESULTS}/provenance/audit_{PROTOCOL}.txt", measurement=MEASUREMENTS, mask=MASK_TYPES, af=AFS)

rule reconstruct:
    input:
        unpack(lambda w: recon_weights(w.method, w)),
        reads=lambda w: READS.get(w.method, []),
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        masks=f"{RESULTS}/masks/{{mask}}_af{{af}}.npz",
        coils=lambda w: measurement_inputs(w, "test"),
    output:
        RECON_FILE,
    log:
        f"{RESULTS}/logs/reconstruct_{{method}}_seed{{seed}}_{PROTOCOL}.log",
    benchmark:
        f"{RESULTS}/benchmarks/reconstruct_{{method}}_seed{{seed}}_{PROTOCOL}.tsv"
    threads: workflow.cores
    params:
        weights=lambda w: as_json(recon_weights(w.method, w)),
        hp=lambda w: as_json(RECON[w.method]["hp"]),
        seed=lambda w: int(w.seed),  # sampling noise of the stochastic methods: the training seed
        device=DEVICE,
        normalise=config["data"]["normalise"],
        measurement=lambda w: measurement_args(w, "test"),
        code=lambda w: recon_code(w.method),  # this method's code only: an LDPM edit reruns no Score-MRI sampling
    conda:
        LDPM_ENV
    shell:
        job_stage() + "reconstruct {wildcards.method} --test-h5 {input.h5} --test-csv {input.csv} "
        "--masks {input.masks} "
        "--weights {params.weights} --hp {params.hp} --seed {params.seed} --device {params.device} "
        "--normalise {params.normalise} {params.measurement} --out {output} > {log} 2>&1"


rule metrics:
    input:
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        recon=RECON_FILE,
        masks=f"{RESULTS}/masks/{{mask}}_af{{af}}.npz",
    output:
        volumes=VOLUME_METRICS,
        slices=f"{RESULTS}/metrics/{{method}}/seed{{seed}}/{PROTOCOL}_slices.csv",
    log:
        f"{RESULTS}/logs/metrics_{{method}}_seed{{seed}}_{PROTOCOL}.log",
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.metrics") + "metrics --test-h5 {input.h5} --test-csv {input.csv} --recon {input.recon} "
        "--masks {input.masks} "
        "--method {wildcards.method} --measurement {wildcards.measurement} --acceleration {wildcards.af} "
        "--training-seed {wildcards.seed} "
        "--out-volumes {output.volumes} --out-slices {output.slices} > {log} 2>&1"


rule perceptual:
    input:
        # Backbone files present now are inputs: adding one later reruns this rule and fills the n/a cells.
        weights=present_weights(EVAL["weights_dir"], EVAL["use_hub_cache"]),
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        recon=lambda w: recon_files(w),
    output:
        PERCEPTUAL,
    log:
        f"{RESULTS}/logs/perceptual_seed{{seed}}_{PROTOCOL}.log",
    benchmark:
        f"{RESULTS}/benchmarks/perceptual_seed{{seed}}_{PROTOCOL}.tsv"
    threads: workflow.cores
    params:
        methods=" ".join(config["methods"]),
        split=as_json(MAIN_FILTER),
        split_name=MAIN_SPLIT,
        weights_dir=shlex.quote(EVAL["weights_dir"]),
        hub="" if EVAL["use_hub_cache"] else "--no-hub-cache",
        seed=SEED,
        device=DEVICE,
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.perceptual") + "perceptual --test-h5 {input.h5} --test-csv {input.csv} --methods "
        "{params.methods} "
        "--recon {input.recon} --split-filter {params.split} --split-name {params.split_name} "
        "--weights-dir {params.weights_dir} {params.hub} --training-seed {wildcards.seed} --seed {params.seed} "
        "--device {params.device} --out {output} > {log} 2>&1"


rule tables:
    input:
        metrics=lambda w: volume_metrics(w),
        perceptual=expand(PERCEPTUAL, seed=SEEDS, allow_missing=True),
        recon=lambda w: recon_files(w, seed=FIRST_SEED),  # compute cost: measured on the first seed's jobs
    output:
        table1=report(f"{RESULTS}/tables/table1_{PROTOCOL}.csv", caption=caption("table1"), category="Tables",
                      labels={"table": "Table I", "measurement": "{measurement}", "masks": "{mask}", "AF": "{af}"}),
        table1_md=report(f"{RESULTS}/tables/table1_{PROTOCOL}.md", caption=caption("table1"),
                         category="Tables", labels={"table": "Table I (md)", "measurement": "{measurement}", "masks": "{mask}", "AF": "{af}"}),
        table3=report(f"{RESULTS}/tables/table3_{PROTOCOL}.csv", caption=caption("table3"), category="Tables",
                      labels={"table": "Table III", "measurement": "{measurement}", "masks": "{mask}", "AF": "{af}"}),
        compute=report(f"{RESULTS}/tables/compute_{PROTOCOL}.md", caption=caption("compute"),
                       category="Tables", labels={"table": "Compute cost", "measurement": "{measurement}", "masks": "{mask}", "AF": "{af}"}),
        other=expand(f"{RESULTS}/tables/{{name}}_{PROTOCOL_KEEP}.tex", name=["table1", "table3"])
        + expand(f"{RESULTS}/tables/compute_{PROTOCOL_KEEP}.{{ext}}", ext=["csv", "tex"])
        + [f"{RESULTS}/tables/table3_{PROTOCOL}.md"],
    log:
        f"{RESULTS}/logs/tables_{PROTOCOL}.log",
    params:
        methods=as_json(config["methods"]),
        splits=as_json(ordered(config["test_splits"])),
        main_split=MAIN_SPLIT,
        mask_per=config["masks"]["per"],
        notes=lambda w: as_json(TABLE1_NOTES + measurement_note(w)),  # filled by baselines.smk, included later
        normalise=config["data"]["normalise"],  # named in Table I's caption
        out_dir=lambda w, output: str(Path(output.table1).parent),
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.tables") + "tables --metrics {input.metrics} --perceptual {input.perceptual} --methods "
        "{params.methods} "
        "--test-splits {params.splits} --main-split {params.main_split} --mask-type {wildcards.mask} "
        "--mask-per {params.mask_per} "
        "--acceleration {wildcards.af} --measurement {wildcards.measurement} --recon {input.recon} --notes "
        "{params.notes} --normalise {params.normalise} "
        "--out-dir {params.out_dir} "
        "> {log} 2>&1"


rule stats:
    input:
        lambda w: volume_metrics(w),
    output:
        csv=report(f"{RESULTS}/tables/stats_{PROTOCOL}.csv", caption=caption("stats"), category="Tables",
                   labels={"table": "Statistics", "measurement": "{measurement}", "masks": "{mask}", "AF": "{af}"}),
        md=report(f"{RESULTS}/tables/stats_{PROTOCOL}.md", caption=caption("stats"), category="Tables",
                  labels={"table": "Statistics (md)", "measurement": "{measurement}", "masks": "{mask}", "AF": "{af}"}),
    log:
        f"{RESULTS}/logs/stats_{PROTOCOL}.log",
    params:
        methods=as_json(config["methods"]),
        split=as_json(MAIN_FILTER),
        n_boot=EVAL["bootstrap_samples"],
        confidence=EVAL["confidence"],
        seed=SEED,
        stem=lambda w: f"{RESULTS}/tables/stats_{w.measurement}_{w.mask}_af{w.af}",
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.stats") + "stats --metrics {input} --methods {params.methods} --split-filter "
        "{params.split} "
        "--mask-type {wildcards.mask} --acceleration {wildcards.af} --n-boot {params.n_boot} "
        "--confidence {params.confidence} --seed {params.seed} --out-stem {params.stem} > {log} 2>&1"


rule figure2:
    input:
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        zero_filled=lambda w: recon_files(w, seed=FIRST_SEED, methods=["zero_filled"]),
        recon=lambda w: recon_files(w, seed=FIRST_SEED),
    output:
        report(f"{RESULTS}/figures/fig2_{PROTOCOL}.png", caption=caption("figure2"), category="Figures",
               labels={"figure": "Fig 2", "measurement": "{measurement}", "masks": "{mask}", "AF": "{af}"}),
    log:
        f"{RESULTS}/logs/figure2_{PROTOCOL}.log",
    params:
        methods=" ".join(config["methods"]),
        split=as_json(MAIN_FILTER),
        n_examples=EVAL["figure_examples"],
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.figures") + "figure2 --test-h5 {input.h5} --test-csv {input.csv} --methods "
        "{params.methods} --recon {input.recon} "
        "--zero-filled {input.zero_filled} --split-filter {params.split} --n-examples {params.n_examples} "
        "--out {output} > {log} 2>&1"


rule audit:
    input:
        table1=f"{RESULTS}/tables/table1_{PROTOCOL}.csv",
        table3=f"{RESULTS}/tables/table3_{PROTOCOL}.csv",
        stats=f"{RESULTS}/tables/stats_{PROTOCOL}.csv",
        figure=f"{RESULTS}/figures/fig2_{PROTOCOL}.png",
    output:
        report(f"{RESULTS}/provenance/audit_{PROTOCOL}.txt", caption=caption("audit"), category="Provenance",
               labels={"audit": "tables and Fig 2", "measurement": "{measurement}", "masks": "{mask}", "AF": "{af}"}),
    log:
        f"{RESULTS}/logs/audit_{PROTOCOL}.log",
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.provenance") + "audit {input.table1} {input.table3} {input.stats} {input.figure} --out {output} > "
        "{log} 2>&1"
