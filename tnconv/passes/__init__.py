"""Passes: pure functions from networks to networks, and the pipeline running them."""

from .pipeline import DEFAULT_PIPELINE, PASSES, get_pass, register, run_pipeline

__all__ = ["PASSES", "DEFAULT_PIPELINE", "register", "get_pass", "run_pipeline"]
