# Baselines (fastMRI U-Net, E2E-VarNet, SwinMR, Score-MRI): their TRAIN / RECON entries (see common.smk).

TRAIN["unet"] = {"inputs": {"train": f"{RESULTS}/data/train.h5"}, "hp": config["unet"]}
RECON["unet"] = {"weights": {"model": model_file("unet")}, "hp": config["unet"]}
