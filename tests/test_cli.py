import subprocess
import sys

import pytest

from genkit import __version__
from genkit.cli import main


def test_solvers_lists_every_solver_with_its_cost(capsys):
    assert main(["solvers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    costs = {line.split()[0]: int(line.split()[1]) for line in lines[1:-1]}
    assert costs == {"euler": 1, "heun": 2, "dpm_solver_2": 2, "dpmpp_2m": 1, "ipndm": 1, "amed": 2, "amed_plugin": 2}
    assert lines[-1] == "schedules: karras, logsnr, time_uniform, uniform"


def test_the_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"genkit {__version__}"


def test_python_dash_m_genkit_runs_and_a_user_error_is_one_line(tmp_path):
    """The real process (the other tests call the CLI's main in-process): its exit code and its only line."""
    result = subprocess.run([sys.executable, "-m", "genkit", "train", "nope.yaml"], cwd=tmp_path, capture_output=True)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "genkit: error: config file nope.yaml does not exist; pass the path of a YAML file such as configs/..."
    ]
