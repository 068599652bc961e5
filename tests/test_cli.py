import subprocess
import sys

import pytest

from genkit import __version__
from genkit.cli import main
from genkit.config import TASKS, config_path, load_config
from genkit.configs import shipped
from genkit.errors import GenkitError
from genkit.train import TRAINERS


def test_solvers_lists_every_solver_with_its_cost(capsys):
    assert main(["solvers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    costs = {line.split()[0]: int(line.split()[1]) for line in lines[1:-1]}
    assert costs == {"euler": 1, "heun": 2, "dpm_solver_2": 2, "dpmpp_2m": 1, "ipndm": 1, "amed": 2, "amed_plugin": 2}
    assert lines[-1] == "schedules: karras, logsnr, time_uniform, uniform, ds_respaced"


def test_the_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"genkit {__version__}"


def test_python_dash_m_genkit_runs_and_a_user_error_is_one_line(tmp_path):
    """The real process (the other tests call the CLI's main in-process): its exit code and its only line."""
    result = subprocess.run([sys.executable, "-m", "genkit", "train", "nope.yaml"], cwd=tmp_path, capture_output=True)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "genkit: error: config file nope.yaml does not exist and names no single shipped config; pass the path of a "
        "YAML file or the name of a shipped config (genkit train --help lists them)"
    ]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_config_prints_a_task_defaults_as_a_config_that_loads_back(task, capsys, tmp_path):
    assert main(["config", task]) == 0
    (tmp_path / "defaults.yaml").write_text(capsys.readouterr().out)
    if task == "compare":  # a comparison needs its one subject section, which has no default
        with pytest.raises(GenkitError, match="a compare config sets exactly one subject section"):
            load_config(tmp_path / "defaults.yaml")
        return
    assert load_config(tmp_path / "defaults.yaml") == TASKS[task]()


def test_config_of_an_unknown_task_is_one_line(capsys):
    assert main(["config", "flows"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"genkit: error: unknown task 'flows'; choose one of: {', '.join(TASKS)}"
    ]


@pytest.mark.parametrize(
    "command, listed", [("train", ["tokenizer/fsq", "flow/rf_mnist5k"]), ("compare", ["compare/samplers_demo"])]
)
def test_help_lists_the_tasks_and_the_shipped_configs(command, listed, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    if command == "train":
        tasks = text.split("tasks: ")[1].split(";")[0].split(", ")
        assert sorted(tasks) == sorted(TRAINERS)
    shown = text.split("shipped configs: ")[1].split(", ")
    assert all(name in shown for name in listed) and all(name in shipped() for name in shown)


def test_a_shipped_config_is_found_by_its_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path("tokenizer/fsq") == config_path("fsq") == shipped()["tokenizer/fsq"]
    assert load_config("tokenizer/fsq").model.quantizer.kind == "fsq"
    with pytest.raises(GenkitError, match="names no single shipped config"):
        config_path("tokenizer/fsq2")


def test_every_shipped_config_loads_and_names_the_task_of_its_folder():
    for name, path in shipped().items():
        folder = name.split("/")[0]
        assert load_config(path).task in {"flow": {"flow", "reflow"}}.get(folder, {folder}), name
