r"""Train an image classifier on class-imbalanced data, with or without CDT.

  python -m cdt_tf.main --dataset=cifar10 --data_dir=../shared/data/cifar10-jpeg \
      --imbalance=exp --imbalance_ratio=100 --loss=cdt --gamma=0.3 --model_dir=runs/c10_cdt
  python -m cdt_tf.main --flagfile=flags/cifar10_lt100_cdt.cfg --model_dir=runs/c10_cdt
"""

from __future__ import annotations

import os

from cdt_tf import cli, config


def command(flag_values) -> None:
    """Trains and evaluates the run the flags describe, then prints its results."""
    run_config = config.Config.from_flags(flag_values)
    from cdt_tf import evaluate, post_hoc, train  # Import TensorFlow: after the flags are known good.

    results = train.train_and_evaluate(run_config)
    if results is None:  # --strategy=multi_worker on a worker other than the chief.
        print(f"This worker is not the chief; the chief writes the results to {run_config.model_dir}.")
        return
    print(evaluate.format_table(results, results["class_names"], results["class_counts"]))
    if results.get("post_hoc"):
        print(post_hoc.format_section(results["post_hoc"]))
    if run_config.second_stage != "none":
        run_second_stage(run_config)
    print(f"Results: {os.path.join(run_config.model_dir, 'results.json')}")


def run_second_stage(run_config: config.Config) -> None:
    """--second_stage: retrain the finished run's classifier (once; a later start reuses the record)."""
    from cdt_tf import retrain_classifier

    name = run_config.second_stage
    record = retrain_classifier.second_stage(
        run_config.model_dir, name, run_config.smooth_head, run_config.smooth_tail, run_config.data_dir
    )
    held = "" if not record.get("validation") else f", validation {100 * record['validation']['top1']:.2f}%"
    took = f" ({record['seconds']:.0f} s)" if record.get("seconds") is not None else ""
    print(
        f"Second stage {name}: top-1 {100 * record['top1']:.2f}%{held}{took}; serve it with: python -m "
        f"cdt_tf.export --model_dir={run_config.model_dir} --classifier={name}"
    )


def run() -> None:
    cli.run(config.define_flags, command)


if __name__ == "__main__":
    run()
