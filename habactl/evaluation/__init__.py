"""Evaluation: train networks from scratch on an archive and test them on real data."""

from habactl.evaluation.protocol import FAST, PRESETS, STANDARD, Protocol, full_data_epochs
from habactl.evaluation.run import (BASELINES, evaluate_archive, evaluate_training_set,
                                    prepare_test_images)
from habactl.evaluation.score import accuracy, summarize
from habactl.evaluation.train import train_net

__all__ = ["BASELINES", "FAST", "PRESETS", "Protocol", "STANDARD", "accuracy",
           "evaluate_archive", "evaluate_training_set", "full_data_epochs",
           "prepare_test_images", "summarize", "train_net"]
