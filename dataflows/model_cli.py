"""``riskstream train``, ``export`` and ``evaluate``: the model pipelines from one command."""

from __future__ import annotations

import argparse
import importlib

from dataflows.settings import Settings

PIPELINES = {
    ("train", "regime"): "models.regime_tft",
    ("train", "vol"): "models.vol_nbeats",
    ("export", "regime"): "export.regime",
    ("export", "vol"): "export.nbeats",
    ("evaluate", "all"): "models.evaluate",
}


def cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    """Run a training, export or evaluation pipeline, passing the remaining arguments through."""
    module = importlib.import_module(PIPELINES[(args.command, args.model)])
    return int(module.main(args.rest) or 0)


def add_model_parsers(sub: argparse._SubParsersAction) -> None:
    """``riskstream train|export regime|vol [...]`` and ``riskstream evaluate [all [...]]``.

    A command with a single pipeline (``evaluate``) may omit the model; its options then
    follow the model name (``riskstream evaluate all --quick``).
    """
    helps = {
        "train": "train a model with pytorch-forecasting (pass --quick for a tiny run)",
        "export": "export a trained model to ONNX, check parity, update the manifest",
        "evaluate": "evaluate the shipped ONNX models on held-out spans, write docs/MODELS.md",
    }
    for command, text in helps.items():
        p = sub.add_parser(command, help=text)
        models = sorted({m for c, m in PIPELINES if c == command})
        if len(models) == 1:
            p.add_argument("model", choices=models, nargs="?", default=models[0])
        else:
            p.add_argument("model", choices=models)
        p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the pipeline (--help)")
        p.set_defaults(func=cmd_model)
