"""The one way a cdt_tf command line starts: define its flags, parse them, run, turn bad input into one line.

Every entry point (`python -m cdt_tf.main|analyze|post_hoc|retrain_classifier|export`, and the
`cdt-*` scripts of pyproject.toml) calls `run(define_flags, command)`. Bad input of every kind is
printed as one line `cdt_tf: error: <message>` on stderr with exit status 2: a flag absl refuses
(unknown, not one of its values, out of its range, missing), an argument that is not a flag, and a
`UserError` raised anywhere below. `--help` (also `-?`, `--helpshort`) prints the command's own
flags with their help texts, under topic headings where the command gives them, and exits 0;
`--helpfull` stays absl's list of every flag, absl's own included.

The tools/ scripts start with `run_tool(main)` instead of `app.run(main)` and report their errors
with `fail` (or raise UserError), so that they speak with the same voice.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter out of the way.

from absl import app, flags  # noqa: E402

from cdt_tf.errors import UserError  # noqa: E402

ERROR_PREFIX = "cdt_tf: error:"
EXIT_BAD_INPUT = 2

# absl's message for a required flag left out (mark_flag_as_required), one line per such flag.
_MISSING_REQUIRED = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.")


def fail(error: Exception | str) -> NoReturn:
    """Prints the error (a UserError, or any message) as one line and exits with status 2."""
    message = " ".join(str(error).split("\n"))
    print(f"{ERROR_PREFIX} {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def flag_error_message(error: flags.Error) -> str:
    """absl's message for a refused flag, as one line that points to --help."""
    lines = [_MISSING_REQUIRED.sub(r"--\1 is required", line).strip() for line in str(error).splitlines()]
    return "; ".join(line for line in lines if line) + "; see --help"


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Parses argv (program name first) into flag_values; returns the arguments that are not flags.

    A flag absl refuses ends the process as other bad input does (`fail`: one line, exit status 2),
    where absl's own parser prints "FATAL Flags parsing error" and exits 1. Pass it to `app.run` as
    flags_parser; `run` does.
    """
    try:
        return flag_values(list(argv))
    except flags.Error as error:
        fail(flag_error_message(error))


def _flag_help(flag: flags.Flag) -> str:
    """One flag as absl's help lists it: name and help text, then its default and accepted values."""
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    short = f"-{flag.short_name}," if flag.short_name else ""
    # A first word longer than the line allows (an enum's <a|b|...> list) stays beside the name: the
    # flag's lines are as wide as that, where absl would move it to a line of its own.
    width = max(flags.get_help_width(), len(f"  {short}{name}: {flag.help.split(' ', 1)[0]}"))
    lines = [flags.text_wrap(f"{short}{name}: {flag.help}", width, indent="    ", firstline_indent="  ")]
    if flag.default_as_str:
        lines.append(flags.text_wrap(f"(default: {flag.default_as_str})", indent="    "))
    if flag.parser.syntactic_help:
        lines.append(flags.text_wrap(f"({flag.parser.syntactic_help})", indent="    "))
    return "\n".join(lines)


def help_text(
    flag_list: Sequence[flags.Flag], doc: str | None = None, topics: Sequence[tuple[str, str]] = ()
) -> str:
    """What --help prints: the command's docstring, then its flags in definition order.

    Args:
      flag_list: the command's own flags, in the order they were defined.
      doc: the command's module docstring (usage examples).
      topics: (heading, flag name) pairs in definition order: a heading covers the flag it names and
        the flags after it, up to the next heading's flag. Empty: one list under "flags:".
    """
    starts = {name: heading for heading, name in topics}
    unknown = sorted(set(starts) - {flag.name for flag in flag_list})
    if unknown:
        raise ValueError(f"help topics name flags the command does not define: {unknown}")
    parts = [doc.strip("\n")] if doc else []
    if not topics:
        parts.append("\nflags:")
    for flag in flag_list:
        if flag.name in starts:
            parts.append(f"\n{starts[flag.name]}:")
        parts.append(_flag_help(flag))
    also = (
        "Also: --flagfile=<file> reads flags from a file, one a line (flags/*.cfg); --helpfull lists "
        "every flag, absl's own (logging, debugging) included."
    )
    parts.append("\n" + flags.text_wrap(also))
    return "\n".join(parts) + "\n"


class _HelpFlag(flags.BooleanFlag):
    """--help: prints the command's help text on stdout and exits 0 (absl's lists the flags of
    `__main__` only, none of ours, and exits 1)."""

    def __init__(self, name: str, short_name: str | None, text: Callable[[], str]):
        super().__init__(name, False, "Show this command's flags and exit.", short_name=short_name)
        self._text = text

    def parse(self, argument) -> None:
        if self._parse(argument):
            sys.stdout.write(self._text())
            sys.exit(0)


def _install_help(text: Callable[[], str]) -> None:
    """Replaces absl's --help, -? and --helpshort in flags.FLAGS by ones that print `text()`."""
    app.define_help_flags()  # absl's help flags, once; app.run then leaves them as they are.
    for name in ("help", "?", "helpshort"):
        delattr(flags.FLAGS, name)
    flags.DEFINE_flag(_HelpFlag("help", "?", text))
    flags.DEFINE_flag(_HelpFlag("helpshort", None, text))


def _run_checked(main: Callable[[list[str]], None], own: Sequence[flags.Flag], doc, topics) -> None:
    """app.run(main) with this module's flag parsing and --help; bad input of any kind is `fail`."""
    _install_help(lambda: help_text(own, doc, topics))

    def checked(argv):
        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value); see --help")
        try:
            main(argv)
        except (UserError, app.UsageError) as error:
            fail(error)

    app.run(checked, flags_parser=parse_flags)


def run(
    define_flags: Callable[[flags.FlagValues], None],
    command: Callable[[flags.FlagValues], None],
    topics: Sequence[tuple[str, str]] = (),
) -> None:
    """Defines the flags in absl's FLAGS, parses sys.argv and calls command(FLAGS).

    Args:
      define_flags: defines the command's flags in the FlagValues it is given.
      command: does the work; raises UserError for input the user can fix.
      topics: --help's headings (`help_text`), e.g. config.HELP_TOPICS.
    """
    before = set(flags.FLAGS)
    define_flags(flags.FLAGS)
    own = list(dict.fromkeys(flags.FLAGS[name] for name in flags.FLAGS if name not in before))
    _run_checked(lambda argv: command(flags.FLAGS), own, sys.modules[command.__module__].__doc__, topics)


def run_tool(main: Callable[[list[str]], None]) -> None:
    """`app.run(main)` for a tools/ script, whose flags its `__main__` module defines: the same flag
    errors, --help and one-line bad input (UserError, app.UsageError) as `run`.

    Args:
      main: absl's main(argv); argv holds the program name only (other arguments are refused).
    """
    main_module = sys.modules["__main__"]
    _run_checked(main, flags.FLAGS.get_flags_for_module(main_module), main_module.__doc__, ())
