"""Flagfile recipes for the benchmark tools: read a flagfile's values, compress its 200-epoch schedule.

Shared by tools/reproduce_table.py and experiments/cdt_plus_ladder.py (no flags defined here, so both can
import it).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FULL_EPOCHS = 200
SCALED_FLAGS = ("warmup_epochs", "drw_epoch", "gamma_epoch")


def flagfile_values(path: str) -> dict[str, str]:
    """--name=value lines of a flagfile (comments skipped)."""
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                name, value = line[2:].split("=", 1)
                values[name] = value
    return values


def scale_epoch(epoch: int, epochs: int, minimum: int = 0) -> int:
    """An epoch of the 200-epoch recipe in a schedule of `epochs`: epoch * epochs / 200, rounded half up."""
    return max(minimum, int((epoch * epochs + FULL_EPOCHS // 2) // FULL_EPOCHS))


def compressed_flags(values: dict[str, str], epochs: int) -> list[str]:
    """Flags that shrink a 200-epoch recipe to `epochs`: every epoch count scaled by epochs / 200, rounded."""
    if epochs == FULL_EPOCHS:
        return []

    def scale(epoch: int, minimum: int = 0) -> int:
        return scale_epoch(epoch, epochs, minimum)

    out = [f"--epochs={epochs}"]
    for name in SCALED_FLAGS:
        if int(values.get(name, "0")):
            out.append(f"--{name}={scale(int(values[name]), minimum=1)}")
    decays = [scale(int(e), minimum=1) for e in values.get("decay_epochs", "160,180").split(",")]
    out.append("--decay_epochs=" + ",".join(str(d) for d in decays))
    return out


def read_json(path: str):
    """A JSON file's content, or None while the file does not exist."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_results(run_dir: str):
    """A run's results.json as a dict, or None while it has none."""
    return read_json(os.path.join(run_dir, "results.json"))


class Runner:
    """Runs each command whose output file is missing (unless run=False) and keeps the command list."""

    def __init__(self, run: bool):
        self.run, self.commands, self.failures = run, [], []

    def ensure(self, command: list[str], output: str, label: str):
        """The JSON at `output` (relative to the repository), running `command` first when it is missing."""
        self.commands.append(shlex.join(["python"] + command[1:]))
        path = os.path.join(REPO, output)
        if not os.path.exists(path) and self.run:
            print(f"[{label}] {shlex.join(command)}", flush=True)
            status = subprocess.run(command, cwd=REPO).returncode
            if status:
                self.failures.append(f"{label} (exit {status})")
        return read_json(path)
