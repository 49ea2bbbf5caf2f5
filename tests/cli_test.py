"""cli: one voice for bad input (one line `cdt_tf: error: ...`, exit 2) from every command line and tool,
flag errors included, and a --help that lists the command's own flags."""

from __future__ import annotations

import os
import sys

import pytest
from absl import flags

from cdt_tf import cli
from cdt_tf import config as config_lib
from conftest import REPO_ROOT, run_command, run_module

ENTRY_POINTS = (
    "cdt_tf.main",
    "cdt_tf.analyze",
    "cdt_tf.post_hoc",
    "cdt_tf.retrain_classifier",
    "cdt_tf.export",
)
TOOLS_DIR = os.path.join(REPO_ROOT, "tools")


def _one_error_line(result) -> str:
    """The command failed as bad input: exit 2, no traceback, no absl FATAL, one `cdt_tf: error:` line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "FATAL" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(cli.ERROR_PREFIX)]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def _flag_values() -> flags.FlagValues:
    values = flags.FlagValues()
    config_lib.define_flags(values)
    return values


def _parse_error(capsys, values, *args) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.parse_flags(["prog", *args], values)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ----------------------------------------------------------------------------- flag errors, in-process


def test_flag_errors_are_one_line_naming_the_flag(capsys):
    error = _parse_error(capsys, _flag_values(), "--dataset=digits", "--model_dir=/tmp/x", "--bogus=1")
    assert error.startswith("cdt_tf: error: Unknown command line flag 'bogus'") and error.endswith(
        "; see --help"
    )
    error = _parse_error(capsys, _flag_values(), "--dataset=mnist", "--model_dir=/tmp/x")
    assert error.startswith("cdt_tf: error: flag --dataset=mnist: value should be one of <cifar10|")
    error = _parse_error(capsys, _flag_values(), "--dataset=digits", "--model_dir=/tmp/x", "--epochs=ten")
    assert error.startswith("cdt_tf: error: flag --epochs=ten:")


def test_missing_required_flags_are_named_on_one_line(capsys):
    assert _parse_error(capsys, _flag_values()) == (
        "cdt_tf: error: --dataset is required; --model_dir is required; see --help"
    )


def test_a_flag_out_of_its_range_is_one_line(capsys):
    values = flags.FlagValues()
    flags.DEFINE_integer("workers", 1, "Workers.", lower_bound=1, flag_values=values)
    error = _parse_error(capsys, values, "--workers=0")
    assert error == "cdt_tf: error: flag --workers=0: 0 is not a positive integer; see --help"


def test_good_flags_parse_and_return_the_other_arguments():
    values = _flag_values()
    assert cli.parse_flags(["prog", "--dataset=digits", "--model_dir=/tmp/x"], values) == ["prog"]
    assert values.dataset == "digits"


# ----------------------------------------------------------------------------- --help, in-process


def _own_flags(values: flags.FlagValues) -> list:
    return list(dict.fromkeys(values[name] for name in values))


def test_help_lists_every_flag_with_its_help_under_its_topic():
    values = _flag_values()
    own = _own_flags(values)
    text = cli.help_text(own, "Train a classifier.", config_lib.HELP_TOPICS)
    assert text.startswith("Train a classifier.\n")
    for flag in own:
        name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
        assert f"  {name}: " in text, name
        assert "".join(flag.help.split()) in "".join(text.split()), flag.name  # Whole, wrapped.
    headings = [text.index(f"\n{heading}:\n") for heading, _ in config_lib.HELP_TOPICS]
    assert headings == sorted(headings)  # In definition order...
    for (_, first), after in zip(config_lib.HELP_TOPICS, headings, strict=True):
        assert text.index(f"  --{first}: ") > after  # ...each above the flag that starts it.
    assert "(default: '200')" in text and "--helpfull" in text


def test_a_help_topic_must_start_at_a_flag_of_the_command():
    with pytest.raises(ValueError, match="does not define"):
        cli.help_text(_own_flags(_flag_values()), None, [("Nowhere", "no_such_flag")])


def test_help_without_topics_is_one_list():
    values = flags.FlagValues()
    flags.DEFINE_string("model_dir", None, "A finished run.", flag_values=values)
    flags.DEFINE_bool("export", False, "Also export.", flag_values=values)
    text = cli.help_text(_own_flags(values))
    assert text.startswith("\nflags:\n  --model_dir: A finished run.\n  --[no]export: Also export.")


# ----------------------------------------------------------------------------- every command line


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_an_unknown_flag_is_one_line_and_exit_2_from_every_entry_point(module):
    line = _one_error_line(run_module(module, "--no_such_flag=1"))
    assert line.startswith("cdt_tf: error: Unknown command line flag 'no_such_flag'"), line


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--dataset=mnist", "--model_dir=/tmp/x"), "flag --dataset=mnist: value should be one of"),
        ((), "--dataset is required; --model_dir is required; see --help"),
        (("--dataset=digits", "--model_dir=/tmp/x", "--epochs=ten"), "flag --epochs=ten:"),
        (
            ("--dataset=digits", "--model_dir=/tmp/x", "--gamma=inf"),
            "--gamma must be a finite number, got inf",
        ),
        (("--dataset=digits", "--model_dir=/tmp/x", "extra"), "unexpected arguments: extra"),
    ],
)
def test_bad_flags_of_the_training_command_are_one_line(args, expected):
    line = _one_error_line(run_module("cdt_tf.main", *args))
    assert expected in line, line


def test_help_lists_the_training_flags_and_exits_0():
    result = run_module("cdt_tf.main", "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    values = _flag_values()
    for name in values:
        assert f"--{name}: " in result.stdout or f"--[no]{name}: " in result.stdout, name
    for heading, _ in config_lib.HELP_TOPICS:
        assert f"\n{heading}:\n" in result.stdout
    assert "python -m cdt_tf.main --flagfile=flags/" in result.stdout  # The module's usage lines.
    assert "--verbosity" not in result.stdout  # absl's own flags are --helpfull's.
    full = run_module("cdt_tf.main", "--helpfull")
    assert "--verbosity" in full.stdout and "--gamma" in full.stdout, full.stderr[-3000:]


def test_help_of_a_report_command_lists_its_flags():
    result = run_module("cdt_tf.post_hoc", "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\nflags:\n  --model_dir: A finished run directory" in result.stdout
    assert "--tau_from: " in result.stdout and "--dataset" not in result.stdout


# ----------------------------------------------------------------------------- tools


def _tool(name: str, *args: str):
    return run_command(sys.executable, os.path.join("tools", f"{name}.py"), *args, timeout=120)


def test_every_tool_with_flags_parses_them_in_the_one_voice():
    """A tool starts with cli.run / cli.run_tool, or (importing no cdt_tf) parses with its own
    parse_flags, which the tests below hold to the same voice; none calls app.run on its own."""
    for name in sorted(os.listdir(TOOLS_DIR)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(TOOLS_DIR, name)) as f:
            source = f.read()
        if "DEFINE_" not in source:
            continue
        starts = ("cli.run_tool(main)", "cli.run(", "app.run(main, flags_parser=parse_flags)")
        assert any(start in source for start in starts), name
        assert "app.run(main)" not in source, name


@pytest.mark.parametrize("tool", ["serving_client", "evaluate_export", "compare_runs", "make_flagfiles"])
def test_a_bad_flag_of_a_tool_is_one_line_and_exit_2(tool):
    line = _one_error_line(_tool(tool, "--no_such_flag=1"))
    assert line.startswith("cdt_tf: error: Unknown command line flag 'no_such_flag'"), line


def test_a_tool_without_cdt_tf_names_its_missing_flags_as_cli_does():
    line = _one_error_line(_tool("evaluate_export"))
    assert line == "cdt_tf: error: --export is required; --images is required; see --help", line


def test_a_tool_refuses_arguments_that_are_not_flags_and_lists_its_flags():
    line = _one_error_line(_tool("compare_runs", "--runs=a", "extra"))
    assert "unexpected arguments: extra" in line, line
    result = _tool("compare_runs", "--help")
    assert result.returncode == 0 and "--runs: " in result.stdout, result.stderr[-3000:]
