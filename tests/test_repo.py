"""Repository promises: CI runs the README's test command; the README names exactly two set-up commands."""

from __future__ import annotations

import re

from conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```bash\n(.+?)\n```", block, flags=re.M | re.S)


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2, "exactly two set-up commands: run the pipeline, run the tests"
    assert "snakemake --cores all" in commands[0]
    assert commands[1] in (REPO / ".ci" / "run").read_text()
