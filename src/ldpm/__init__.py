"""LDPM benchmark pipeline: data, models, samplers, metrics. Never imports snakemake."""

__version__ = "0.1.0"


class LdpmError(Exception):
    """A user-facing error: one line that names the file or config key and the fix."""
