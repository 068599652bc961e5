"""Trainers and the one training loop they share; `train(config)` runs what a config's task names."""

from genkit.train import amed, flow, gan, reflow, tokenizer

TRAINERS = {
    "tokenizer": tokenizer.train,
    "flow": flow.train,
    "reflow": reflow.run,
    "amed": amed.train,
    "gan": gan.train,
}


def train(config) -> dict:
    """Train the run `config` describes (a ReFlow config runs every unfinished stage); its last evaluation."""
    return TRAINERS[config.task](config)
