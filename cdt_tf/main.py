r"""Train an image classifier on class-imbalanced data, with or without CDT.

  python -m cdt_tf.main --dataset=cifar10 --data_dir=../shared/data/cifar10-jpeg \
      --imbalance=exp --imbalance_ratio=100 --loss=cdt --gamma=0.3 --model_dir=runs/c10_cdt
  python -m cdt_tf.main --flagfile=flags/cifar10_lt100_cdt.cfg --model_dir=runs/c10_cdt
"""

from __future__ import annotations

import os
import sys

from cdt_tf import catalog, cli, config, durability, rundir
from cdt_tf.errors import UserError


def command(flag_values) -> None:
    """Trains and evaluates the run the flags describe, then prints its results."""
    run_config = config.Config.from_flags(flag_values)
    durability.check_usable(run_config.model_dir)  # Before TensorFlow loads: a bad --model_dir is one line.
    try:
        with durability.disk_full_as_user_error(run_config.model_dir, "writing the run directory"):
            train_and_report(run_config)
    except UserError as error:
        if not durability.is_disk_full(error):
            raise
        # A full disk can leave an HDF5 file half-closed, and h5py may crash tearing it down at exit:
        # say the one line, then leave without running finalizers.
        print(f"{cli.ERROR_PREFIX} {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    except KeyboardInterrupt:
        kept = rundir.backed_up_epochs(run_config.model_dir)
        if rundir.trained(run_config.model_dir):
            where = "after training; the same command evaluates the trained model (model.keras) again"
        elif kept >= run_config.epochs:
            where = f"after the last epoch; the same command saves model.keras (all {kept} epochs are kept)"
        else:  # The first epoch not kept yet.
            where = f"in epoch {kept + 1}; the same command resumes from it"
        print(f"cdt_tf: interrupted {where}", file=sys.stderr)
        sys.exit(130)


def train_and_report(run_config: config.Config) -> None:
    """train.train_and_evaluate, its results printed, then the second stage the flags ask for."""
    from cdt_tf import evaluate, post_hoc, train  # Import TensorFlow: after the flags are known good.

    results = train.train_and_evaluate(run_config)
    if results is None:  # --strategy=multi_worker on a worker other than the chief.
        print(f"This worker is not the chief; the chief writes the results to {run_config.model_dir}.")
        return
    print(evaluate.format_table(results, results["class_names"], results["class_counts"]))
    if results.get("post_hoc"):
        print(post_hoc.format_section(results["post_hoc"]))
    if run_config.second_stage != "none":
        with durability.exclusive(run_config.model_dir):
            run_second_stage(run_config)
    print(f"Results: {os.path.join(run_config.model_dir, 'results.json')}")


def run_second_stage(run_config: config.Config) -> None:
    """--second_stage: retrain the finished run's classifier (once; a later start reuses the record)."""
    from cdt_tf import retrain_classifier

    name, c = run_config.second_stage, run_config
    options = retrain_classifier.stage_options(
        catalog.retrain_method(name), c.shift_lr_factor, c.shift_affine, c.wb_weight_decay, c.wb_threshold
    )
    record = retrain_classifier.second_stage(
        c.model_dir, name, c.smooth_head, c.smooth_tail, c.data_dir, options
    )
    held = "" if not record.get("validation") else f", validation {100 * record['validation']['top1']:.2f}%"
    took = f" ({record['seconds']:.0f} s)" if record.get("seconds") is not None else ""
    print(
        f"Second stage {name}: top-1 {100 * record['top1']:.2f}%{held}{took}; serve it with: python -m "
        f"cdt_tf.export --model_dir={run_config.model_dir} --classifier={name}"
    )


def run() -> None:
    cli.run(config.define_flags, command, topics=config.HELP_TOPICS)


if __name__ == "__main__":
    run()
