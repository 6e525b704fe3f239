import json
import sys
import shlex

from ldpm import LdpmError
from ldpm.config import validate_config

try:
    config.update(validate_config(config, workflow.source_path("../schemas/config.schema.yaml")))
except LdpmError as exc:
    # One line on stderr and a non-zero exit, before any job runs (a WorkflowError would add a traceback).
    sys.exit(f"ldpm: error: {exc}")

RESULTS = "results"
SEED = config["seed"]
DEVICE = config["device"]


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
