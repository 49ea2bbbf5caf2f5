"""tools/serving_client.py without a server: empty batches over REST, and its one-line errors.

Requests against the exported signatures are tested in tests/export_test.py.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from cdt_tf import cli
from conftest import load_tool, run_command

serving_client = load_tool("serving_client")


def _client(*args: str):
    return run_command(sys.executable, os.path.join("tools", "serving_client.py"), *args, timeout=120)


def test_an_empty_image_list_is_refused():
    with pytest.raises(ValueError, match="--images is empty"):
        serving_client.read_inputs([])


def test_rest_refuses_an_empty_batch_before_the_server_does():
    """TF Serving's REST parser answers "No values in 'instances' array" to an empty row-format batch."""
    with pytest.raises(ValueError, match="REST API refuses an empty batch"):
        serving_client.build_rest_request("serving_default", {"images": np.zeros([0, 8, 8, 3], np.uint8)})
    with pytest.raises(ValueError, match="REST API refuses an empty batch"):
        serving_client.build_rest_request("serve_image_bytes", {"image_bytes": []})


def test_an_empty_answer_parses_and_prints_nothing():
    assert serving_client.parse_rest_response({"predictions": []}) == {}
    assert serving_client.format_predictions({}, [], top_k=3) == ""
    columnar = serving_client.parse_rest_response({"outputs": {"probabilities": [], "classes": []}})
    assert columnar["probabilities"].shape == (0,)
    assert serving_client.format_predictions(columnar, []) == ""


def test_the_client_speaks_with_cdt_tfs_voice():
    assert serving_client.ERROR_PREFIX == cli.ERROR_PREFIX


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--images=",), "cdt_tf: error: --images is empty: name image files"),
        (
            ("--images=a.png", "--protocol=smtp"),
            "cdt_tf: error: flag --protocol=smtp: value should be one of",
        ),
        ((), "cdt_tf: error: --images is required; see --help"),
        (("--images=a.png", "extra"), "cdt_tf: error: unexpected arguments: extra"),
        (("--images=no_such_file.png",), "cdt_tf: error: [Errno 2] No such file or directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, expected):
    result = _client(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr[-3000:]
