"""``riskstream train`` and ``riskstream export``: the model pipelines from one command."""

from __future__ import annotations

import argparse
import importlib

from dataflows.settings import Settings

PIPELINES = {
    ("train", "regime"): "models.regime_tft",
    ("train", "vol"): "models.vol_nbeats",
    ("export", "regime"): "export.regime",
    ("export", "vol"): "export.nbeats",
}


def cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    """Run a training or export pipeline, passing the remaining arguments through."""
    module = importlib.import_module(PIPELINES[(args.command, args.model)])
    return int(module.main(args.rest) or 0)


def add_model_parsers(sub: argparse._SubParsersAction) -> None:
    """``riskstream train regime|vol [...]`` and ``riskstream export regime|vol [...]``."""
    helps = {
        "train": "train a model with pytorch-forecasting (pass --quick for a tiny run)",
        "export": "export a trained model to ONNX, check parity, update the manifest",
    }
    for command, text in helps.items():
        p = sub.add_parser(command, help=text)
        p.add_argument("model", choices=["regime", "vol"])
        p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the pipeline (--help)")
        p.set_defaults(func=cmd_model)
