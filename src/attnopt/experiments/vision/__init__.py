"""E6: the paper's ViT experiment (ℓ1.1 mirror descent vs Adam) on CIFAR-10 or the 8×8 digits."""

from attnopt.experiments.vision.config import VisionConfig
from attnopt.experiments.vision.run import CompareResult, VisionResult, run_compare, run_vision

__all__ = ["VisionConfig", "VisionResult", "CompareResult", "run_vision", "run_compare"]
