"""The one way a cdt_tf command line starts: define its flags, parse them, run, turn bad input into one line.

Every entry point (`python -m cdt_tf.main|analyze|post_hoc|retrain_classifier|export`, and the
`cdt-*` scripts of pyproject.toml) calls `run(define_flags, command)`. A `UserError` raised anywhere
below is printed as `cdt_tf: error: <message>` on stderr with exit status 2; flag-parsing errors are
absl's (exit 1).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter out of the way.

from absl import app, flags  # noqa: E402

from cdt_tf.errors import UserError  # noqa: E402

ERROR_PREFIX = "cdt_tf: error:"


def fail(error: UserError) -> None:
    """Prints the error as one line and exits with status 2."""
    message = " ".join(str(error).split("\n"))
    print(f"{ERROR_PREFIX} {message}", file=sys.stderr)
    sys.exit(2)


def run(
    define_flags: Callable[[flags.FlagValues], None], command: Callable[[flags.FlagValues], None]
) -> None:
    """Defines the flags in absl's FLAGS, parses sys.argv and calls command(FLAGS).

    Args:
      define_flags: defines the command's flags in the FlagValues it is given.
      command: does the work; raises UserError for input the user can fix.
    """
    define_flags(flags.FLAGS)
    # --helpshort lists the flags of the module that defined them as the command's own.
    flags.adopt_module_key_flags(sys.modules[define_flags.__module__])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            command(flags.FLAGS)
        except UserError as error:
            fail(error)

    app.run(main)
