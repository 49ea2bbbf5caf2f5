r"""Train an image classifier on class-imbalanced data, with or without CDT.

  python -m cdt_tf.main --dataset=cifar10 --data_dir=../shared/data/cifar10-jpeg \
      --imbalance=exp --imbalance_ratio=100 --loss=cdt --gamma=0.3 --model_dir=runs/c10_cdt
  python -m cdt_tf.main --flagfile=flags/cifar10_lt100_cdt.cfg --model_dir=runs/c10_cdt
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter out of the way.

from absl import app, flags  # noqa: E402

from cdt_tf import config as config_lib  # noqa: E402
from cdt_tf.errors import UserError  # noqa: E402

config_lib.define_flags()
flags.adopt_module_key_flags(config_lib)  # --helpshort lists them.
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_lib.Config.from_flags(FLAGS)
        from cdt_tf import evaluate, train  # Imports TensorFlow: after the flags are known good.

        results = train.train_and_evaluate(config)
    except UserError as error:
        print(f"cdt_tf: error: {error}", file=sys.stderr)
        sys.exit(2)
    if results is None:  # --strategy=multi_worker on a worker other than the chief.
        print(f"This worker is not the chief; the chief writes the results to {config.model_dir}.")
        return
    print(evaluate.format_table(results, results["class_names"], results["class_counts"]))
    if results.get("post_hoc"):
        from cdt_tf import post_hoc

        print(post_hoc.format_section(results["post_hoc"]))
    print(f"Results: {os.path.join(config.model_dir, 'results.json')}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
