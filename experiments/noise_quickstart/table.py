"""Builds the results table of experiments/noise_quickstart/README.md from each model's
metrics.json (src/eval.py at the end of training) and training_metrics.csv (the sample FID the
FID/KID callback logged during training)."""
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = [("fid", "FID*"), ("kid_x100", "KIDx100*"), ("is", "IS*"), ("cls_is", "shape IS (real: cls_is_real)")]


def fid_during_training(model: str) -> list[tuple[int, float]]:
    """(iteration, eval/fid_samples) of each evaluation in the training log (the CSV logger's
    `step` counts iterations: Lightning's batches, not its optimizer steps)."""
    rows = csv.DictReader((HERE / model / "training_metrics.csv").open())
    return [(int(row["step"]), float(row["eval/fid_samples"])) for row in rows if row.get("eval/fid_samples")]


def main(models: list[str]) -> None:
    print("| model | " + " | ".join(title for _, title in COLUMNS) + " | FID* during training (iteration: FID) |")
    print("|---|" + "---|" * len(COLUMNS) + "---|")
    for model in models:
        values = json.loads((HERE / model / "metrics.json").read_text())["metrics"]["samples"]
        curve = ", ".join(f"{iteration}: {fid:.1f}" for iteration, fid in fid_during_training(model))
        cells = [f"{values[k]:.3f}" + (f" ({values['cls_is_real']:.3f})" if k == "cls_is" else "") for k, _ in COLUMNS]
        print(f"| {model} | " + " | ".join(cells) + f" | {curve} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["dcgan", "lsgan", "wgangp"])
