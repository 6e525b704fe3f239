# Baselines (fastMRI U-Net, E2E-VarNet, SwinMR, Score-MRI): their TRAIN / RECON entries (see common.smk).
TRAIN_DATA = {"train": f"{RESULTS}/data/train.h5"}


def without(block, *keys):
    """A config block minus keys its training ignores: Snakemake reruns a job whose params change, so changing a
    sampling setting must not retrain the model."""
    return {k: v for k, v in block.items() if k not in keys}


def official_weights(model):
    """The local official fastMRI state dict of `model` (unet / varnet), checked before any job runs."""
    path = config[model].get("weights")
    if not path:
        sys.exit(f"ldpm: error: config key {model}.weights: required when {model}.official is true; "
                 f"set it to the local path of fastMRI's brain {model} state dict")
    if model in config["methods"] and not Path(path).is_file():
        sys.exit(f"ldpm: error: config key {model}.weights: {path} not found; put fastMRI's brain {model} "
                 f"state dict there or fix the path")
    return path


# U-Net and E2E-VarNet: trained here, or (official: true, the paper's rows) fastMRI's released brain models. Those were
# trained on multi-coil train+val data with equispaced masks and run here on a single-coil simulation: Table I says so.
for baseline in ("unet", "varnet"):
    if config[baseline]["official"]:
        RECON[baseline] = {"weights": {"model": official_weights(baseline)}, "hp": config[baseline]}
        TABLE1_NOTES.append(f"{baseline}: fastMRI's official brain weights ({config[baseline]['weights']}), trained "
                            f"by fastMRI on multi-coil train+val data with equispaced masks, not on this run's split; "
                            f"here applied to the single-coil simulation.")
    else:
        TRAIN[baseline] = {"inputs": TRAIN_DATA, "hp": without(config[baseline], "official", "weights")}
        RECON[baseline] = {"weights": {"model": model_file(baseline)}, "hp": config[baseline]}

# SwinMR (nPI) and Score-MRI: always trained here, as the paper did with their official recipes.
TRAIN["swinmr"] = {"inputs": TRAIN_DATA, "hp": config["swinmr"]}
RECON["swinmr"] = {"weights": {"model": model_file("swinmr")}, "hp": config["swinmr"]}
TRAIN["score_mri"] = {"inputs": TRAIN_DATA, "hp": without(config["score_mri"], "n_steps", "n_corrector", "snr")}
RECON["score_mri"] = {"weights": {"model": model_file("score_mri")}, "hp": config["score_mri"]}
