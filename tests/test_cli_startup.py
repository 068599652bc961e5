"""`genkit --help` answers without importing torch or diffusers (seconds on a loaded machine), and still lists
every command; a command's own --help builds its arguments."""

import subprocess
import sys

from launching import genkit

PROBE = """
import sys
from genkit.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(sorted(name for name in ("torch", "diffusers", "accelerate") if name in sys.modules))
"""


def probe(*argv: str) -> subprocess.CompletedProcess:
    code = PROBE.format(argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_top_level_help_imports_no_torch():
    result = probe("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
    for command in ("solvers", "train", "config", "compare", "eval-tokenizer", "sample", "schedule"):
        assert command in result.stdout


def test_a_commands_help_lists_its_arguments(tmp_path):
    result = genkit(tmp_path, "sample", "--help")
    assert result.returncode == 0, result.stderr
    assert "--solver" in result.stdout and "--predictor" in result.stdout and "ipndm" in result.stdout
