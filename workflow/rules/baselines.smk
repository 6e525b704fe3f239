# Baselines (fastMRI U-Net, E2E-VarNet, SwinMR, Score-MRI): their TRAIN / RECON entries (see common.smk).
TRAIN_DATA = {"train": f"{RESULTS}/data/train.h5", "val": f"{RESULTS}/data/val.h5"}  # val: per-epoch curves


# U-Net and E2E-VarNet: trained here, or (official: true) fastMRI's released brain models. Those were trained on
# multi-coil train+val data with equispaced masks and run here on a single-coil simulation: Table I says so, and
# ldpm.config refuses them unless no test volume comes from a dataset in `trained_on`.
for baseline in ("unet", "varnet"):
    if config[baseline]["official"]:
        RECON[baseline] = {"weights": {"model": official_weights(baseline)}, "hp": config[baseline]}
        TABLE1_NOTES.append(f"{baseline}: fastMRI's official brain weights ({config[baseline]['weights']}), trained "
                            f"by fastMRI on multi-coil train+val data with equispaced masks, not on this run's split; "
                            f"here applied to the single-coil simulation.")
    else:
        TRAIN[baseline] = {"inputs": TRAIN_DATA, "hp": without(config[baseline], "official", "weights", "trained_on")}
        RECON[baseline] = {"weights": {"model": model_file(baseline)},
                           "hp": without(config[baseline], "weights", "trained_on")}

# SwinMR (nPI) and Score-MRI: always trained here, as the paper did with their official recipes.
TRAIN["swinmr"] = {"inputs": TRAIN_DATA, "hp": config["swinmr"]}
READS["swinmr"] = files_under(config["swinmr"]["vgg_weights"])
RECON["swinmr"] = {"weights": {"model": model_file("swinmr")}, "hp": config["swinmr"]}
TRAIN["score_mri"] = {"inputs": TRAIN_DATA, "hp": without(config["score_mri"], "n_steps", "n_corrector", "snr")}
RECON["score_mri"] = {"weights": {"model": model_file("score_mri")}, "hp": config["score_mri"]}
