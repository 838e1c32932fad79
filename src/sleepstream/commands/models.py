"""``sleepstream ship`` and ``sleepstream export``: the shipped model and its files for apps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sleepstream.commands import DATA_HELP, Subparsers, optional_path
from sleepstream.paths import check_output_dir, write_atomic


def add_parser(commands: Subparsers) -> argparse.ArgumentParser:
    p = commands.add_parser("ship", help="train on all nights and save the shipped model")
    p.add_argument("-c", "--config", required=True, help="LightningCLI YAML")
    p.add_argument("--loso", required=True, help="report folder of `cv` with this config")
    p.add_argument("--out", default="src/sleepstream/shipped", help="where to save it")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("overrides", nargs="*", help="LightningCLI overrides after --")
    p.set_defaults(run=ship)

    p = commands.add_parser("export", help="ONNX and Core ML of the one-epoch step, checked")
    p.add_argument("--ckpt", help="a training checkpoint (default: the shipped model)")
    p.add_argument(
        "--thresholds", help="with --ckpt: a `cv` predictions .npz to choose thresholds on"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subject", default="46343", help="real night for parity and test vectors")
    p.add_argument("--precision", choices=["float32", "float16"], default="float32")
    p.add_argument("--data", help=DATA_HELP)
    p.set_defaults(run=export)
    return p


def ship(a: argparse.Namespace) -> int:
    out = check_output_dir(a.out)
    from sleepstream.data.folder import load_all
    from sleepstream.models.shipped import read_loso_metrics, ship_model

    config, loso = Path(a.config), Path(a.loso)
    metrics = read_loso_metrics(loso, config)  # before the nights load: fail fast
    weights, meta = ship_model(config, load_all(a.data), loso, metrics, out, a.overrides)
    print(f"Saved {weights} and {meta}")
    return 0


def export(a: argparse.Namespace) -> int:
    out = check_output_dir(a.out)
    from sleepstream.logs import converter_progress

    with converter_progress(a.verbose):
        from sleepstream.data.folder import data_folder, load_recording
        from sleepstream.export import export_all
        from sleepstream.models.shipped import net_and_thresholds

        net, thresholds = net_and_thresholds(optional_path(a.ckpt), optional_path(a.thresholds))
        recording = load_recording(data_folder(a.data), a.subject) if a.subject else None
        summary = export_all(net, thresholds, out, recording, precision=a.precision)
    text = json.dumps(summary, indent=2)
    write_atomic(out / "export_summary.json", text + "\n")
    print(text)
    return 0
