"""Every number a user gives is checked at start: config keys by their declared range, CLI options by theirs."""

import argparse
import dataclasses
import re
import types
import typing

import pytest
import yaml

from genkit.cli import build_parser, main
from genkit.config import TASKS, Range, load_config
from genkit.errors import GenkitError

TOKENIZER = {
    "task": "tokenizer",
    "data": {"source": "crops", "image_size": 32},
    "model": {"channels": [8, 16, 16], "norm_groups": 4},
}


def numeric_fields(cls: type, prefix: str = ""):
    """(dotted key, field) for every int, float or list-of-numbers field of a config dataclass, nested ones too."""
    for field in dataclasses.fields(cls):
        kinds = typing.get_args(field.type) if isinstance(field.type, types.UnionType) else (field.type,)
        for kind in kinds:
            if dataclasses.is_dataclass(kind):
                yield from numeric_fields(kind, f"{prefix}{field.name}.")
            elif kind in (int, float) or typing.get_args(kind) in ((int,), (float,)):
                yield f"{prefix}{field.name}", field


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_numeric_config_key_declares_its_range(task):
    keys = list(numeric_fields(TASKS[task]))
    assert keys, task
    undeclared = [key for key, field in keys if not isinstance(field.metadata.get("range"), Range)]
    assert not undeclared, f"{task}: {undeclared} lack a ranged(...) declaration"


def test_every_numeric_cli_option_is_range_checked():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        for action in command._actions:
            assert action.type not in (int, float), f"genkit {name} {action.option_strings} takes any number"


def write(tmp_path, content: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-1", "optimizer.lr=-1.0 is out of range: it must be above 0"),
        ("optimizer.lr=0", "optimizer.lr=0.0 is out of range: it must be above 0"),
        ("optimizer.betas=[0.9,1.0]", "optimizer.betas=[0.9, 1.0] is out of range: every entry must be at least 0"),
        ("train.steps=0", "train.steps=0 is out of range: it must be at least 1"),
        ("train.ema_decay=1", "train.ema_decay=1.0 is out of range: it must be at least 0 and below 1"),
        ("train.seed=-3", "train.seed=-3 is out of range"),
        ("data.image_size=0", "data.image_size=0 is out of range"),
        ("model.channels=[8,0]", "model.channels=[8, 0] is out of range"),
        ("model.quantizer.codebook_size=0", "model.quantizer.codebook_size=0 is out of range"),
        ("data.image_size=30", "data.image_size=30 must be divisible by 4, the tokenizer's downsampling"),
        ("model.quantizer.levels=[2,5]", "model.quantizer.levels=[2, 5] needs entries of at least 3"),
    ],
)
def test_a_number_out_of_range_names_its_key(tmp_path, override, message):
    with pytest.raises(GenkitError, match="config key " + re.escape(message)):
        load_config(write(tmp_path, TOKENIZER), [override])


@pytest.mark.parametrize(
    ("content", "override", "message"),
    [
        ({"task": "gan", "gan": {"method": "wgan_gp"}}, "gan.n_critic=0", "gan.n_critic=0 is out of range"),
        ({"task": "gan", "model": {"kind": "dcgan"}, "data": {"source": "mnist5k"}}, "data.image_size=24", "power of"),
        (
            {"task": "flow", "model": {"kind": "unet"}, "data": {"source": "crops"}},
            "data.image_size=31",
            "divisible by 2",
        ),
        ({"task": "flow", "model": {"kind": "unet"}, "data": {"source": "moons"}}, "train.steps=3", "not images"),
        ({"task": "amed"}, "amed.max_order=5", "amed.max_order=5 is out of range: it must be at least 1 and at most"),
        ({"task": "reflow"}, "pairs.nfe=4", "the reference solver picks its own steps"),
        ({"task": "compare", "samplers": {}}, "samplers.nfe=[4,0]", "samplers.nfe=[4, 0] is out of range"),
        ({"task": "compare", "samplers": {}}, "num_samples=1", "num_samples=1 is out of range: it must be at least 2"),
        ({"task": "compare"}, "seed=1", "exactly one subject section (samplers, tokenizers, gans); this one sets none"),
    ],
)
def test_each_task_checks_its_numbers(tmp_path, content, override, message):
    with pytest.raises(GenkitError, match=re.escape(message)):
        load_config(write(tmp_path, content), [override])


def test_unset_optional_numbers_are_allowed(tmp_path):
    config = load_config(write(tmp_path, {"task": "gan"}))
    assert config.gan.n_critic is None and config.train.mixed_precision is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "runs/x", "--nfe", "0"], "argument --nfe: must be at least 1, got 0"),
        (["sample", "runs/x", "--num", "-5"], "argument --num: must be at least 1, got -5"),
        (["sample", "runs/x", "--refine-steps", "-1"], "argument --refine-steps: must be at least 0, got -1"),
        (["sample", "runs/x", "--refine-step-size", "0"], "argument --refine-step-size: must be above 0, got 0"),
        (["eval-tokenizer", "runs/x", "--images", "0"], "argument --images: must be at least 1, got 0"),
        (["sample", "runs/x", "--nfe", "two"], "argument --nfe: invalid int value: 'two'"),
    ],
)
def test_a_bad_cli_number_is_one_line_naming_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"genkit {argv[0]}: error: {message}"]


def test_a_config_mistake_from_the_cli_is_one_line(tmp_path, capsys):
    assert main(["train", str(write(tmp_path, TOKENIZER)), "optimizer.lr=-1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "genkit: error: config key optimizer.lr=-1.0 is out of range: it must be above 0"
    ]
