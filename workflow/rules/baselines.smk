# Baselines (fastMRI U-Net, E2E-VarNet, SwinMR, Score-MRI): their TRAIN / RECON entries (see common.smk).
TRAIN_DATA = {"train": f"{RESULTS}/data/train.h5", "val": f"{RESULTS}/data/val.h5"}  # val: per-epoch curves


# U-Net and E2E-VarNet: trained here, or (official: true) fastMRI's released brain models. Those were trained on
# multi-coil train+val data with equispaced masks: under the multicoil measurement they run on the inputs they were
# trained for, under magnitude on a single-coil simulation; Table I says so, and
# ldpm.config refuses them unless no test volume comes from a dataset in `trained_on`.
for baseline in ("unet", "varnet"):
    if config[baseline]["official"]:
        RECON[baseline] = {"weights": {"model": official_weights(baseline)}, "hp": config[baseline]}
        TABLE1_NOTES.append(f"{baseline}: fastMRI's official brain weights ({config[baseline]['weights']}), trained "
                            f"by fastMRI on multi-coil train+val data with equispaced masks, not on this run's split; "
                            f"under the magnitude measurement applied to the single-coil simulation, under multicoil to "
                            f"the raw coil k-space (RSS zero-filled input for the U-Net) they were trained on.")
    else:  # trained on each measurement's own simulation (unet, unet_multicoil): the reconstruct job picks its own
        train_measured(baseline, TRAIN_DATA, without(config[baseline], "official", "weights", "trained_on"))
        RECON[baseline] = {"weights": {"model": measured_model_file(baseline)},
                           "hp": without(config[baseline], "weights", "trained_on")}

# SwinMR (nPI) and Score-MRI: always trained here, as the paper did with their official recipes. Score-MRI learns a
# prior on fully sampled images, which no measurement changes: one model serves both.
train_measured("swinmr", TRAIN_DATA, config["swinmr"], reads=files_under(config["swinmr"]["vgg_weights"]))
RECON["swinmr"] = {"weights": {"model": measured_model_file("swinmr")}, "hp": config["swinmr"]}
TRAIN["score_mri"] = {"inputs": TRAIN_DATA, "hp": without(config["score_mri"], "n_steps", "n_corrector", "snr")}
RECON["score_mri"] = {"weights": {"model": model_file("score_mri")}, "hp": config["score_mri"]}

# Classical compressed sensing (ldpm.baselines.cs): nothing to train; λ is chosen per protocol on the validation
# split (rule cs_tune), once for every training seed (the solvers are deterministic).
CS = config["cs"]
if CS["backend"] == "bart" and {"cs_tv", "cs_wavelet"} & set(config["methods"]) and not shutil.which("bart"):
    sys.exit("ldpm: error: config key cs.backend: bart needs the `bart` command on PATH (Debian package bart); "
             "install it or set cs.backend: sigpy")
CS_TUNED = f"{RESULTS}/cs/{{method}}_{PROTOCOL}.json"
for method in ("cs_tv", "cs_wavelet"):
    RECON[method] = {"weights": {"tuned": CS_TUNED.replace("{method}", method)}, "hp": without(CS, "lam", "val_slices")}


rule cs_tune:
    input:
        h5=f"{RESULTS}/data/val.h5",
        csv=f"{RESULTS}/data/val.csv",
        coils=lambda w: measurement_inputs(w, "val"),
    output:
        json=CS_TUNED,
        csv=f"{RESULTS}/cs/{{method}}_{PROTOCOL}.csv",
    log:
        f"{RESULTS}/logs/cs_tune_{{method}}_{PROTOCOL}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cs_tune_{{method}}_{PROTOCOL}.tsv"
    wildcard_constraints:
        method="cs_tv|cs_wavelet",
    params:
        hp=lambda w: as_json(CS | {"lam": {w.method: CS["lam"][w.method]}}),  # its own grid: one edit reruns one
        cf=lambda w: config["masks"]["center_fractions"][int(w.af)],
        seed=SEED,
        normalise=config["data"]["normalise"],
        measurement=lambda w: measurement_args(w, "val"),
    conda:
        LDPM_ENV
    shell:
        stage("ldpm.baselines.cs") + "tune-cs {wildcards.method} --val-h5 {input.h5} --val-csv {input.csv} "
        "--hp {params.hp} --mask-type {wildcards.mask} --acceleration {wildcards.af} --center-fraction {params.cf} "
        "--seed {params.seed} --normalise {params.normalise} {params.measurement} --out-json {output.json} "
        "--out-csv {output.csv} > {log} 2>&1"
