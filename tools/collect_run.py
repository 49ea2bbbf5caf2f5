r"""Copies a finished run's record into the checkout: results/<name>/{config,results}.json, metrics.jsonl
and the records of its second stages (retrained_*.json).

  python tools/collect_run.py --run=~/cdt-runs/cifar10_lt100_cdt
  python tools/collect_run.py --run=~/cdt-runs/cifar10_lt100_cdt --export   # + export/1 (SavedModel)
  python tools/collect_run.py --run=~/cdt-runs/cifar10_lt100_cdt_plus --export --classifier=crt_las

Run directories live outside the checkout (hours of training must survive a fresh checkout); what
BENCHMARKS.md quotes is committed from here, without checkpoints. <name> defaults to the run
directory's name, which by convention is the flagfile's name.
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdt_tf import cli, rundir  # noqa: E402
from cdt_tf.errors import UserError  # noqa: E402

FILES = (rundir.CONFIG, rundir.RESULTS, rundir.METRICS)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("run", None, "A finished run directory.")
flags.DEFINE_string("name", None, "Folder under results/ (default: the run directory's name).")
flags.DEFINE_string("results_dir", os.path.join(REPO_ROOT, "results"), "Where the record goes.")
flags.DEFINE_bool("export", False, "Also export the SavedModel to results/<name>/export/ (a few MB).")
flags.DEFINE_string(
    "classifier",
    "trained",
    "With --export: the classifier to serve, 'trained' or a second stage of the run (e.g. crt_las), "
    "as cdt_tf.export --classifier.",
)
flags.mark_flag_as_required("run")
FLAGS = flags.FLAGS


def collect(run: str, destination: str) -> list[str]:
    """Copies FILES and the retrained_*.json records of a finished run into destination; returns the
    paths written."""
    rundir.read_finished(run)  # Refuses an unfinished or damaged run in one line.
    os.makedirs(destination, exist_ok=True)
    # The second stages' records (retrained_*.json, a few KB each; not their .npz weights).
    retrained = sorted(n for n in os.listdir(run) if n.startswith("retrained_") and n.endswith(".json"))
    written = []
    for name in (*FILES, *retrained):
        shutil.copyfile(os.path.join(run, name), os.path.join(destination, name))
        written.append(os.path.join(destination, name))
    return written


def main(argv):
    del argv
    run = os.path.expanduser(FLAGS.run)
    destination = os.path.join(FLAGS.results_dir, FLAGS.name or os.path.basename(os.path.normpath(run)))
    try:
        for path in collect(run, destination):
            print(path)
        if FLAGS.export:
            from cdt_tf import export  # Imports TensorFlow.

            logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines name the staging directory.
            path, tau = export.export_run(
                run, os.path.join(destination, "export"), classifier=FLAGS.classifier
            )
            print(f"{path} (tau={tau:g}, classifier {FLAGS.classifier})")
    except UserError as error:
        cli.fail(error)


if __name__ == "__main__":
    cli.run_tool(main)
