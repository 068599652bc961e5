import subprocess
import sys

from genkit import __version__
from genkit.cli import main


def test_solvers_lists_every_solver_with_its_cost(capsys):
    assert main(["solvers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    costs = {line.split()[0]: int(line.split()[1]) for line in lines[1:-1]}
    assert costs == {"euler": 1, "heun": 2, "dpm_solver_2": 2, "dpmpp_2m": 1, "ipndm": 1, "amed": 2, "amed_plugin": 2}
    assert lines[-1] == "schedules: karras, logsnr, time_uniform, uniform"


def test_python_dash_m_genkit_runs():
    result = subprocess.run([sys.executable, "-m", "genkit", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"genkit {__version__}"
