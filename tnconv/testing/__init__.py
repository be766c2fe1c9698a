"""Testing helpers: slow reference implementations, random configurations, hypothesis strategies.

``tnconv.testing.strategies`` needs ``hypothesis`` (the ``test`` extra) and is
imported on first use; ``tnconv.testing.calls`` calls every functional on a configuration.
"""

from .references import WIDE, ConvConfig, conv, conv_transpose, draw_config, fold, patches, random_config, unfold

__all__ = ["ConvConfig", "conv", "conv_transpose", "fold", "patches", "random_config", "draw_config", "WIDE", "unfold",
           "strategies"]


def __getattr__(name):
    if name == "strategies":
        # import_module, not ``from . import``: that looks the name up here first and recurses
        import importlib

        return importlib.import_module(f"{__name__}.strategies")
    raise AttributeError(name)
