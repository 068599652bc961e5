"""Trainers and the one training loop they share."""
