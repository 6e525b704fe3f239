import json
import sys
import shlex
from pathlib import Path

from ldpm import LdpmError
from ldpm.config import validate_config

try:
    config.update(validate_config(config, Path(workflow.current_basedir) / "../schemas/config.schema.yaml"))
except LdpmError as exc:
    # One line on stderr and a non-zero exit, before any job runs (a WorkflowError would add a traceback).
    sys.exit(f"ldpm: error: {exc}")

RESULTS = "results"
SEED = config["seed"]
# Config strings reach shell commands quoted, never as shell syntax (numbers are typed by the schema).
DEVICE = shlex.quote(config["device"])
MAIN_SPLIT = shlex.quote(config["main_split"])
# Training jobs run data-parallel under torchrun when train_processes > 1 (see ldpm.train).
TRAIN_LAUNCHER = ("ldpm" if config["train_processes"] == 1 else
                  f"torchrun --standalone --nproc_per_node {config['train_processes']} -m ldpm")


def as_json(value):
    """A config block as one shell-quoted JSON argument for the `ldpm` command line."""
    return shlex.quote(json.dumps(value))


def raw_datasets():
    """{name: {role, paths}}: generated directories for the embedded source, configured ones for fastMRI."""
    data = config["data"]
    if data["source"] == "embedded":
        return {name: {"role": spec["role"], "paths": [f"{RESULTS}/raw/embedded/{name}"]}
                for name, spec in data["datasets"].items()}
    return data["datasets"]


# Registries the rules files fill in (one entry per model / method; see src/ldpm/stages.py for the contracts):
# TRAIN[model] = {"inputs": {name: file}, "hp": config block}   -> rule train  -> results/models/{model}.safetensors
# RECON[method] = {"weights": {name: file}, "hp": config block} -> rule reconstruct -> results/recon/{method}/af{af}.h5
# TARGETS: extra final outputs (tables, figures) that `rule all` requests.
TRAIN = {}
RECON = {}
TARGETS = []
TABLE1_NOTES = []  # per-method caveats printed under Table I (e.g. weights not trained here)


def recon_weights(method, af):
    """RECON[method]["weights"] for one AF: a file pattern with {af} (e.g. LDPM's tuned sampler) gets the AF."""
    return {name: path.format(af=af) for name, path in RECON[method]["weights"].items()}


def model_file(model):
    return f"{RESULTS}/models/{model}.safetensors"
