# LDPM: natural-image pretraining (embedded), Sketcher, MR-VAE, MRControlNet, Dual-Stage Sampler, ablations.
#
# Models (results/models/ldpm_*.safetensors, all made by the generic `rule train`):
#   ldpm_natural_vae → ldpm_natural_unet      embedded scale only: the tiny stand-ins for SD, pretrained on photos;
#                                             with ldpm.sd_dir set, stable-diffusion-2-1-base replaces both
#   ldpm_sketcher;  ldpm_mrvae (← natural VAE);  ldpm_mrcn (← U-Net, MR-VAE, sketcher)
# Methods (generic `rule reconstruct`): ldpm (Table I) and the Table II ablations; plus Table II and Fig 3.
if not LDPM["sd_dir"]:
    TRAIN["ldpm_natural_vae"] = {"inputs": {}, "hp": ldpm_hp("vae", "natural", "natural_vae")}
    TRAIN["ldpm_natural_unet"] = {"inputs": ldpm_weights("natural_vae"),
                                  "hp": ldpm_hp("vae", "unet", "natural", "natural_unet")}
SD_FILES = files_under(LDPM["sd_dir"])
# The sketcher and the MRCN learn from the measurement (x_u, the sketch): one of each per measurement
# (ldpm_sketcher_multicoil, ldpm_mrcn_multicoil); the MR-VAE and the photo stand-ins see fully sampled images only.
train_measured("ldpm_sketcher", LDPM_DATA, ldpm_hp("sketcher"))
TRAIN["ldpm_mrvae"] = {"inputs": LDPM_DATA | ldpm_weights("natural_vae"),
                       "hp": ldpm_hp("sd_dir", "vgg_weights", "vae", "mrvae")}
train_measured("ldpm_mrcn", LDPM_DATA | ldpm_weights("natural_unet", "mrvae", "sketcher"),
               ldpm_hp("sd_dir", "vae", "unet", "sketcher", "mrcn"), reads=SD_FILES)
if MULTICOIL:
    TRAIN["ldpm_mrcn_multicoil"]["inputs"]["sketcher"] = model_file("ldpm_sketcher_multicoil")

# With ablations_mode "retrain" the ablations without MR-VAE / SkM run an MRCN trained that way (natural-image VAE
# latents; the |DC(x_u)| condition), so Table II does not mix a missing part with a train/test mismatch.
RETRAIN = LDPM["ablations_mode"] == "retrain"
TRAIN["ldpm_mrcn_no_mrvae"] = {"inputs": LDPM_DATA | ldpm_weights("natural_unet", "natural_vae", "sketcher"),
                               "hp": ldpm_hp("sd_dir", "vae", "unet", "sketcher", "mrcn")}
TRAIN["ldpm_mrcn_no_skm"] = {"inputs": LDPM_DATA | ldpm_weights("natural_unet", "mrvae"),
                             "hp": ldpm_hp("sd_dir", "vae", "unet", "sketcher", "mrcn")}
LDPM_WEIGHTS |= {name: model_file(f"ldpm_{name}") for name in ("mrcn_no_mrvae", "mrcn_no_skm")}

# SD-2-1-base's files (paper scale) and the VGG16 of eq. 5 reach their stages through hp paths: declared inputs.
READS["ldpm_mrvae"] = SD_FILES + files_under(LDPM["vgg_weights"])
READS |= {model: SD_FILES for model in ("ldpm_mrcn_no_mrvae", "ldpm_mrcn_no_skm")}

# Each method reads only the weights it uses (w/o MR-VAE: the natural-image VAE; w/o SkM: no sketcher).
FULL = ("natural_unet", "mrvae", "sketcher", "mrcn")
LDPM_METHOD_WEIGHTS = {
    "ldpm": ldpm_method_weights(FULL),
    "ldpm_no_mrvae": ldpm_method_weights(("natural_unet", "natural_vae", "sketcher"),
                                         "mrcn_no_mrvae" if RETRAIN else "mrcn"),
    "ldpm_no_skm": ldpm_method_weights(("natural_unet", "mrvae"), "mrcn_no_skm" if RETRAIN else "mrcn"),
    "ldpm_no_dss": ldpm_method_weights(FULL),
    "ldpm_final_dc": ldpm_method_weights(FULL),
    "ldpm_mean_k": ldpm_method_weights(FULL),
}
for method, weights in LDPM_METHOD_WEIGHTS.items():
    READS[method] = SD_FILES
    RECON[method] = {"weights": weights, "hp": ldpm_hp("sd_dir", "vae", "unet", "sketcher", "sampler")
                     | ({"posterior_samples": LDPM["posterior_samples"]} if method == "ldpm_mean_k" else {})}

TARGETS += expand(f"{RESULTS}/tables/ldpm_diagnostics_{{mask}}_af{{af}}.{{ext}}", mask=MASK_TYPES, af=AFS,
                  ext=["csv", "md"])
# the sampler's networks, those of the job's measurement
TUNE_WEIGHTS = {name: LDPM_MEASURED.get(name, LDPM_WEIGHTS[name]) for name in FULL if name in LDPM_WEIGHTS}


rule ldpm_tune_sampler:
    input:
        unpack(lambda w: for_job(TUNE_WEIGHTS, w)),
        h5=f"{RESULTS}/data/val.h5",
        csv=f"{RESULTS}/data/val.csv",
        coils=lambda w: measurement_inputs(w, "val"),
    output:
        json=TUNED,
        csv=f"{RESULTS}/ldpm/seed{{seed}}/sampler_{PROTOCOL}.csv",
    log:
        f"{RESULTS}/logs/ldpm_tune_sampler_seed{{seed}}_{PROTOCOL}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ldpm_tune_sampler_seed{{seed}}_{PROTOCOL}.tsv"
    threads: workflow.cores
    params:
        weights=lambda w: as_json(for_job(TUNE_WEIGHTS, w)),
        hp=as_json(ldpm_hp("sd_dir", "vae", "unet", "sketcher", "sampler", "tuning")),
        cf=lambda w: config["masks"]["center_fractions"][int(w.af)],
        seed=lambda w: int(w.seed),
        device=DEVICE,
        normalise=config["data"]["normalise"],
        measurement=lambda w: measurement_args(w, "val"),
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.method.tuning") + "tune-sampler --val-h5 {input.h5} --val-csv {input.csv} --weights "
        "{params.weights} --hp {params.hp} "
        "--mask-type {wildcards.mask} --acceleration {wildcards.af} --center-fraction {params.cf} "
        "--seed {params.seed} --device {params.device} --normalise {params.normalise} {params.measurement} "
        "--out-json {output.json} --out-csv {output.csv} > {log} 2>&1"


# The diagnostics take apart the first training seed's LDPM (the one Fig 2 shows).
rule ldpm_diagnostics:
    input:
        unpack(lambda w: recon_weights("ldpm", w, seed=FIRST_SEED, measurement="magnitude")),
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        masks=f"{RESULTS}/masks/{{mask}}_af{{af}}.npz",
        recon=lambda w: recon_files(w, seed=FIRST_SEED, methods=["ldpm"]),
    output:
        csv=report(f"{RESULTS}/tables/ldpm_diagnostics_{{mask}}_af{{af}}.csv", caption="../report/diagnostics.rst",
                   category="Diagnostics", labels={"table": "LDPM diagnostics", "masks": "{mask}", "AF": "{af}"}),
        other=expand(f"{RESULTS}/tables/ldpm_diagnostics_{{{{mask}}}}_af{{{{af}}}}.{{ext}}", ext=["md", "tex"]),
    log:
        f"{RESULTS}/logs/ldpm_diagnostics_{{mask}}_af{{af}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ldpm_diagnostics_{{mask}}_af{{af}}.tsv"
    threads: workflow.cores
    params:
        weights=lambda w: as_json(recon_weights("ldpm", w, seed=FIRST_SEED, measurement="magnitude")),
        hp=as_json(RECON["ldpm"]["hp"]),
        splits=as_json(ordered(config["test_splits"])),
        stem=lambda w: f"{RESULTS}/tables/ldpm_diagnostics_{w.mask}_af{w.af}",
        seed=FIRST_SEED,
        device=DEVICE,
        normalise=config["data"]["normalise"],
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.method.diagnostics") + "ldpm-diagnostics --test-h5 {input.h5} --test-csv {input.csv} --masks "
        "{input.masks} "
        "--recon {input.recon} --weights {params.weights} --hp {params.hp} --test-splits {params.splits} "
        "--mask-type {wildcards.mask} --acceleration {wildcards.af} --seed {params.seed} --device {params.device} "
        "--normalise {params.normalise} --out-stem {params.stem} > {log} 2>&1"


TARGETS += expand(f"{RESULTS}/tables/table2_{{mask}}_af{{af}}.{{ext}}", mask=MASK_TYPES, af=AFS,
                  ext=["csv", "md", "tex"])
TARGETS += [f"{RESULTS}/figures/fig3.png", f"{RESULTS}/tables/fig3_vae.csv"]


rule ldpm_table2:
    input:
        lambda w: volume_metrics(w, methods=LDPM["ablations"]),
    output:
        csv=report(f"{RESULTS}/tables/table2_{{mask}}_af{{af}}.csv", caption="../report/table2.rst",
                   category="Tables", labels={"table": "Table II", "masks": "{mask}", "AF": "{af}"}),
        md=report(f"{RESULTS}/tables/table2_{{mask}}_af{{af}}.md", caption="../report/table2.rst",
                  category="Tables", labels={"table": "Table II (md)", "masks": "{mask}", "AF": "{af}"}),
        tex=f"{RESULTS}/tables/table2_{{mask}}_af{{af}}.tex",
    log:
        f"{RESULTS}/logs/table2_{{mask}}_af{{af}}.log",
    params:
        methods=as_json(LDPM["ablations"]),
        split=as_json(MAIN_FILTER),
        split_name=MAIN_SPLIT,
        mode=LDPM["ablations_mode"],
        stem=lambda w: f"{RESULTS}/tables/table2_{w.mask}_af{w.af}",
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.ablations") + "table2 --metrics {input} --methods {params.methods} --split-filter "
        "{params.split} "
        "--split-name {params.split_name} --mask-type {wildcards.mask} --acceleration {wildcards.af} "
        "--mode {params.mode} --out-stem {params.stem} > {log} 2>&1"


# Fig 3: the first training seed's MR-VAE against the natural-image VAE.
rule ldpm_figure3:
    input:
        unpack(lambda w: for_job(ldpm_weights("natural_vae", "mrvae"), w, seed=FIRST_SEED)),
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
    output:
        png=report(f"{RESULTS}/figures/fig3.png", caption="../report/figure3.rst", category="Figures",
                   labels={"figure": "Fig 3"}),
        csv=report(f"{RESULTS}/tables/fig3_vae.csv", caption="../report/figure3.rst", category="Tables",
                   labels={"table": "Fig 3 VAE metrics"}),
    log:
        f"{RESULTS}/logs/figure3.log",
    benchmark:
        f"{RESULTS}/benchmarks/ldpm_figure3.tsv"
    threads: workflow.cores
    params:
        weights=lambda w: as_json(for_job(ldpm_weights("natural_vae", "mrvae"), w, seed=FIRST_SEED)),
        hp=as_json(ldpm_hp("sd_dir", "vae")),
        split=as_json(MAIN_FILTER),
        split_name=MAIN_SPLIT,
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.evaluate.ablations") + "figure3 --test-h5 {input.h5} --test-csv {input.csv} --weights "
        "{params.weights} --hp {params.hp} "
        "--split-filter {params.split} --split-name {params.split_name} --out {output.png} "
        "--out-csv {output.csv} > {log} 2>&1"
