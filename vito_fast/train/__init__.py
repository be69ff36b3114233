"""Pretraining: config tree, schedules, LARS, checkpoints, distributed setup and the loop.

    from vito_fast.train import load_config, train
    train(load_config("demo", overrides=["train.steps=20"]), "runs/demo")

May import eval, curate, prepare, synthetic, model, data and the layers below; never demo or cli.
"""
from vito_fast._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Config": ".config",
        "load_config": ".config",
        "config_diff": ".config",
        "train": ".loop",
        "TrainResult": ".loop",
        "NonFiniteLossError": ".loop",
        "LARS": ".lars",
        "learning_rate": ".schedules",
        "ema_momentum": ".schedules",
        "save_checkpoint": ".checkpoint",
        "load_checkpoint": ".checkpoint",
        "ConfigMismatchError": ".checkpoint",
        "SyntheticPairSource": ".data",
    },
)
