# LDPM: natural-image pretraining (embedded), Sketcher, MR-VAE, MRControlNet, Dual-Stage Sampler, ablations.
#
# Models (results/models/ldpm_*.safetensors, all made by the generic `rule train`):
#   ldpm_natural_vae → ldpm_natural_unet      embedded scale only: the tiny stand-ins for SD, pretrained on photos;
#                                             with ldpm.sd_dir set, stable-diffusion-2-1-base replaces both
#   ldpm_sketcher;  ldpm_mrvae (← natural VAE);  ldpm_mrcn (← U-Net, MR-VAE, sketcher)
# Methods (generic `rule reconstruct`): ldpm (Table I) and the Table II ablations; plus Table II and Fig 3.
from ldpm.method import check_sd_dir

LDPM = config["ldpm"]
try:
    check_sd_dir(LDPM["sd_dir"])
except LdpmError as exc:
    sys.exit(f"ldpm: error: {exc}")

# Natural-image patches default to the MRI image size, so the pretrained U-Net sees latents of the size it controls.
LDPM_NATURAL = LDPM["natural"] | {"patch_size": LDPM["natural"]["patch_size"] or config["data"]["image_size"]}
LDPM_TRAIN_H5 = f"{RESULTS}/data/train.h5"
# The "SD" weights: files trained here at the embedded scale, nothing (read from sd_dir) at the paper scale.
LDPM_PRETRAINED = {} if LDPM["sd_dir"] else {"natural_vae": model_file("ldpm_natural_vae"),
                                             "natural_unet": model_file("ldpm_natural_unet")}
LDPM_WEIGHTS = LDPM_PRETRAINED | {name: model_file(f"ldpm_{name}") for name in ("sketcher", "mrvae", "mrcn")}


def ldpm_hp(*keys):
    """Only the `ldpm` sub-blocks a stage uses: Snakemake reruns a job whose params change, so e.g. a sampler
    setting must not retrain the models."""
    return {key: LDPM_NATURAL if key == "natural" else LDPM[key] for key in keys}


def ldpm_weights(*names):
    return {name: LDPM_WEIGHTS[name] for name in names if name in LDPM_WEIGHTS}


if not LDPM["sd_dir"]:
    TRAIN["ldpm_natural_vae"] = {"inputs": {}, "hp": ldpm_hp("vae", "natural", "natural_vae")}
    TRAIN["ldpm_natural_unet"] = {"inputs": ldpm_weights("natural_vae"),
                                  "hp": ldpm_hp("vae", "unet", "natural", "natural_unet")}
TRAIN["ldpm_sketcher"] = {"inputs": {"train": LDPM_TRAIN_H5}, "hp": ldpm_hp("sketcher")}
TRAIN["ldpm_mrvae"] = {"inputs": {"train": LDPM_TRAIN_H5} | ldpm_weights("natural_vae"),
                       "hp": ldpm_hp("sd_dir", "vgg_weights", "vae", "mrvae")}
TRAIN["ldpm_mrcn"] = {"inputs": {"train": LDPM_TRAIN_H5} | ldpm_weights("natural_unet", "mrvae", "sketcher"),
                      "hp": ldpm_hp("sd_dir", "vae", "unet", "sketcher", "mrcn")}

# With ablations_mode "retrain" the ablations without MR-VAE / SkM run an MRCN trained that way (natural-image VAE
# latents; the |DC(x_u)| condition), so Table II does not mix a missing part with a train/test mismatch.
RETRAIN = LDPM["ablations_mode"] == "retrain"
TRAIN["ldpm_mrcn_no_mrvae"] = {"inputs": {"train": LDPM_TRAIN_H5} | ldpm_weights("natural_unet", "natural_vae",
                                                                                 "sketcher"),
                               "hp": ldpm_hp("sd_dir", "vae", "unet", "sketcher", "mrcn")}
TRAIN["ldpm_mrcn_no_skm"] = {"inputs": {"train": LDPM_TRAIN_H5} | ldpm_weights("natural_unet", "mrvae"),
                             "hp": ldpm_hp("sd_dir", "vae", "unet", "sketcher", "mrcn")}
LDPM_WEIGHTS |= {name: model_file(f"ldpm_{name}") for name in ("mrcn_no_mrvae", "mrcn_no_skm")}

# Sampler settings the paper leaves open, chosen on the validation split per AF (ldpm.method.tuning); with an
# empty grid the reconstructions use ldpm.sampler as it is and this file is not made.
TUNED = f"{RESULTS}/ldpm/sampler_af{{af}}.json"
TUNE = bool(LDPM["tuning"]["grid"])


def ldpm_method_weights(names, mrcn="mrcn"):
    weights = ldpm_weights(*names) | {"mrcn": LDPM_WEIGHTS[mrcn]}
    return weights | ({"sampler_tuned": TUNED} if TUNE else {})


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
    RECON[method] = {"weights": weights, "hp": ldpm_hp("sd_dir", "vae", "unet", "sketcher", "sampler")
                     | ({"posterior_samples": LDPM["posterior_samples"]} if method == "ldpm_mean_k" else {})}

TARGETS += expand(f"{RESULTS}/tables/ldpm_diagnostics_af{{af}}.{{ext}}", af=config["masks"]["accelerations"],
                  ext=["csv", "md"])


rule ldpm_tune_sampler:
    input:
        unpack(lambda w: ldpm_weights(*FULL)),
        h5=f"{RESULTS}/data/val.h5",
        csv=f"{RESULTS}/data/val.csv",
    output:
        json=TUNED,
        csv=f"{RESULTS}/ldpm/sampler_af{{af}}.csv",
    log:
        f"{RESULTS}/logs/ldpm_tune_sampler_af{{af}}.log",
    threads: workflow.cores
    params:
        weights=as_json(ldpm_weights(*FULL)),
        hp=as_json(ldpm_hp("sd_dir", "vae", "unet", "sketcher", "sampler", "tuning")),
        cf=lambda w: config["masks"]["center_fractions"][int(w.af)],
        seed=SEED,
        device=DEVICE,
    shell:
        "ldpm tune-sampler --val-h5 {input.h5} --val-csv {input.csv} --weights {params.weights} --hp {params.hp} "
        "--acceleration {wildcards.af} --center-fraction {params.cf} --seed {params.seed} --device {params.device} "
        "--out-json {output.json} --out-csv {output.csv} > {log} 2>&1"


rule ldpm_diagnostics:
    input:
        unpack(lambda w: recon_weights("ldpm", w.af)),
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
        masks=f"{RESULTS}/masks/af{{af}}.npz",
        recon=f"{RESULTS}/recon/ldpm/af{{af}}.h5",
    output:
        expand(f"{RESULTS}/tables/ldpm_diagnostics_af{{{{af}}}}.{{ext}}", ext=["csv", "md", "tex"]),
    log:
        f"{RESULTS}/logs/ldpm_diagnostics_af{{af}}.log",
    threads: workflow.cores
    params:
        weights=lambda w: as_json(recon_weights("ldpm", w.af)),
        hp=as_json(RECON["ldpm"]["hp"]),
        splits=as_json(config["test_splits"]),
        stem=lambda w: f"{RESULTS}/tables/ldpm_diagnostics_af{w.af}",
        seed=SEED,
        device=DEVICE,
    shell:
        "ldpm ldpm-diagnostics --test-h5 {input.h5} --test-csv {input.csv} --masks {input.masks} "
        "--recon {input.recon} --weights {params.weights} --hp {params.hp} --test-splits {params.splits} "
        "--acceleration {wildcards.af} --seed {params.seed} --device {params.device} --out-stem {params.stem} "
        "> {log} 2>&1"


TARGETS += expand(f"{RESULTS}/tables/table2_af{{af}}.{{ext}}", af=config["masks"]["accelerations"],
                  ext=["csv", "md", "tex"])
TARGETS += [f"{RESULTS}/figures/fig3.png", f"{RESULTS}/tables/fig3_vae.csv"]


rule ldpm_table2:
    input:
        lambda w: expand(f"{RESULTS}/metrics/{{method}}/af{w.af}_volumes.csv", method=LDPM["ablations"]),
    output:
        expand(f"{RESULTS}/tables/table2_af{{{{af}}}}.{{ext}}", ext=["csv", "md", "tex"]),
    log:
        f"{RESULTS}/logs/table2_af{{af}}.log",
    params:
        methods=as_json(LDPM["ablations"]),
        split=as_json(config["test_splits"][config["main_split"]]),
        mode=LDPM["ablations_mode"],
    shell:
        "ldpm table2 --metrics {input} --methods {params.methods} --split-filter {params.split} "
        "--split-name {MAIN_SPLIT} --acceleration {wildcards.af} --mode {params.mode} "
        "--out-stem {RESULTS}/tables/table2_af{wildcards.af} > {log} 2>&1"


rule ldpm_figure3:
    input:
        unpack(lambda w: ldpm_weights("natural_vae", "mrvae")),
        h5=f"{RESULTS}/data/test.h5",
        csv=f"{RESULTS}/data/test.csv",
    output:
        png=f"{RESULTS}/figures/fig3.png",
        csv=f"{RESULTS}/tables/fig3_vae.csv",
    log:
        f"{RESULTS}/logs/figure3.log",
    threads: workflow.cores
    params:
        weights=as_json(ldpm_weights("natural_vae", "mrvae")),
        hp=as_json(ldpm_hp("sd_dir", "vae")),
        split=as_json(config["test_splits"][config["main_split"]]),
    shell:
        "ldpm figure3 --test-h5 {input.h5} --test-csv {input.csv} --weights {params.weights} --hp {params.hp} "
        "--split-filter {params.split} --split-name {MAIN_SPLIT} --out {output.png} "
        "--out-csv {output.csv} > {log} 2>&1"
