import os

# Tests never touch the network or the home folder, whoever runs them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
