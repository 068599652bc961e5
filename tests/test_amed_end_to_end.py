"""End-to-end AMED: the predictor (and optionally its timesteps) trained on the terminal error of the whole solve."""

import pytest
import torch
from test_amed_distill import CONFIG, distil_in_process, distil_on_one_and_two_ranks
from torch.nn.parallel import DistributedDataParallel
from weights import assert_same_weights, float64_training_atol

from genkit import GaussianMixture
from genkit.config import load_config
from genkit.errors import GenkitError
from genkit.fields import Field
from genkit.models import load_model
from genkit.paths import EDMPath
from genkit.predictors import PREDICTOR_SCHEDULE, LearnedTimesteps, PredictorModel
from genkit.schedules.file import load_schedule, read_schedule
from genkit.train.amed import AmedRunConfig, AmedSettings, AmedTrainer, start_states
from samplers import amed_plugin, reference
from samplers.errors import SamplerError

PLUGIN = {"solver": "amed_plugin", "base": "ipndm", "schedule": "karras", "teacher": "ipndm", "scale_time": 0.2}


@pytest.mark.parametrize("student", [{"solver": "amed"}, PLUGIN], ids=["amed", "amed_plugin"])
def test_end_to_end_equals_greedy_with_one_interval(tmp_path, student):
    """N = 2: the greedy loss at t_1 is the terminal loss, and both take one update a step, so the weights agree."""
    mixture = GaussianMixture.random(8, (64,), seed=0, diagonal=True)
    trained = {}
    for loss in ("greedy", "end_to_end"):
        settings = AmedSettings(**student, num_steps=2, afs=False, teacher_steps=3, loss=loss)
        trained[loss] = distil_in_process(tmp_path / loss, settings, mixture, (64,), steps=5).state_dict()
    # The same operations on the same numbers in the same order: equal to the last bit on any CPU.
    assert_same_weights(trained["greedy"], trained["end_to_end"])


def plugin_rmse(folder, settings: AmedSettings, mixture: GaussianMixture) -> float:
    """Distil the iPNDM plugin; its RMSE on held-out noise to an accurate solve, on its saved or named timesteps."""
    predictor = distil_in_process(folder, settings, mixture, (64,), steps=100)
    saved = folder / "custom" / "model" / PREDICTOR_SCHEDULE
    timesteps = read_schedule(saved).timesteps if saved.is_file() else settings.timesteps()
    x = 80 * torch.randn(256, 64, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    target = reference(mixture.edm, x, 80.0, 0.002, rtol=1e-9, atol=1e-9)
    options = predictor.tied_settings.solver_options(predictor)
    with torch.no_grad():
        return (amed_plugin(mixture.edm, x, timesteps, **options) - target).pow(2).mean().sqrt().item()


def test_end_to_end_beats_greedy_and_learned_timesteps_beat_fixed_ones(tmp_path):
    """iPNDM plugin at NFE 5 on the 64-dim mixture: the greedy loss's r helps one interval and hurts the next."""
    mixture = GaussianMixture.random(8, (64,), seed=0, diagonal=True)
    base = {**PLUGIN, "num_steps": 4, "afs": True, "teacher_steps": 2}
    greedy = plugin_rmse(tmp_path / "greedy", AmedSettings(**base), mixture)
    end_to_end = plugin_rmse(tmp_path / "e2e", AmedSettings(**base, loss="end_to_end"), mixture)
    joint = plugin_rmse(tmp_path / "joint", AmedSettings(**base, loss="end_to_end", learn_timesteps=True), mixture)
    # Measured: 0.153, 0.086, 0.036.
    assert end_to_end < greedy / 1.3, (greedy, end_to_end)
    assert joint < end_to_end / 1.5, (end_to_end, joint)
    saved = read_schedule(tmp_path / "joint" / "custom" / "model" / PREDICTOR_SCHEDULE)
    assert (saved.field_id, saved.time, saved.solver) == ("custom", "sigma", "amed_plugin")
    timesteps, initial = saved.timesteps, AmedSettings(**base).timesteps()
    assert timesteps[[0, -1]].tolist() == initial[[0, -1]].tolist() and (timesteps.diff() < 0).all(), timesteps
    assert not torch.allclose(timesteps, initial, rtol=0.05), "the timesteps did not move"
    assert saved.nfe("amed_plugin", afs=True) == 5
    # The checkpoint keeps the learned timesteps as a model folder, so a resumed run continues them.
    (checkpoint,) = (tmp_path / "joint" / "custom" / "checkpoints").glob("step_*")
    kept = load_model(checkpoint / "timesteps", (LearnedTimesteps,))
    torch.testing.assert_close(kept().detach(), timesteps, rtol=1e-6, atol=0)


def test_learned_timesteps_need_the_end_to_end_loss():
    with pytest.raises(GenkitError, match="amed.learn_timesteps .* set amed.loss=end_to_end"):
        AmedSettings(learn_timesteps=True)
    with pytest.raises(GenkitError, match="amed.loss"):
        AmedSettings(loss="terminal")


@pytest.mark.slow
def test_two_processes_learn_the_same_predictor_and_timesteps_as_one(tmp_path):
    """End to end with learned timesteps, the global batch over two gloo ranks: the same weights and times as one."""
    amed = {**CONFIG["amed"], "loss": "end_to_end", "learn_timesteps": True}
    train = {**CONFIG["train"], "steps": 6, "eval_every": 6, "float64": True}
    config = {**CONFIG, "num_samples": 512, "amed": amed, "train": train}
    models = distil_on_one_and_two_ranks(tmp_path, config)
    one, two = (PredictorModel.from_pretrained(model).state_dict() for model in models)
    assert_same_weights(one, two, float64_training_atol(lr=5e-3, updates=6))
    field = load_config(tmp_path / "amed.yaml").field.load()
    one, two = (load_schedule(model / PREDICTOR_SCHEDULE, field) for model in models)
    torch.testing.assert_close(one.timesteps, two.timesteps, rtol=0, atol=float64_training_atol(lr=0.05, updates=6))


class PreparedContext:
    """The loop's StepContext as the trainer sees it under two processes: `models` hold DDP-wrapped modules."""

    def __init__(self, modules: dict):
        self.modules = modules

    def unwrap(self, name: str):
        return self.modules[name]

    def update(self, names, loss) -> None:
        loss.backward()


@pytest.mark.parametrize("loss", ["greedy", "end_to_end"])
def test_a_ddp_wrapped_bottleneck_predictor_is_still_fed_bottleneck_features(tmp_path, loss):
    """DDP hides a module's attributes: the solvers must still learn from the trainer that it reads the bottleneck.

    The mixture field has no bottleneck, so asking for it is an error; a trainer that let the wrapper hide
    `features` would train on slope features without a word.
    """
    mixture = GaussianMixture.random(2, (8,), seed=0)
    field = Field("custom", (8,), torch.float64, [(mixture.edm, EDMPath())])
    settings = AmedSettings(num_steps=3, afs=False, features="bottleneck", loss=loss)
    trainer = AmedTrainer(AmedRunConfig(amed=settings), field, torch.device("cpu"))
    predictor = trainer.models["predictor"]
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/group", rank=0, world_size=1)
    try:
        trainer.models["predictor"] = DistributedDataParallel(predictor)
        assert getattr(trainer.models["predictor"], "features", "slope") == "slope"
        noise = start_states(field, 4, seed=0)
        with pytest.raises(SamplerError, match="reads bottleneck features"):
            trainer.train_step([noise], PreparedContext({"predictor": predictor}))
    finally:
        torch.distributed.destroy_process_group()
