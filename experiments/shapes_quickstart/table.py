"""Builds the results table of experiments/shapes_quickstart/README.md from each model's metrics.json."""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = [("fid", "FID*"), ("kid_x100", "KIDx100*"), ("iou", "mask IoU"), ("color_error", "colour err"),
           ("l1", "L1"), ("psnr", "PSNR"), ("ssim", "SSIM")]


def main(models: list[str]) -> None:
    print("| model | direction | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    baseline = None
    for model in models:
        metrics = json.loads((HERE / model / "metrics.json").read_text())["metrics"]
        for direction, values in metrics.items():
            print(f"| {model} | {direction} | " + " | ".join(f"{values[k]:.3f}" for k, _ in COLUMNS) + " |")
            baseline = baseline or values
    identity = [f"{baseline['identity_' + k]:.3f}" if "identity_" + k in baseline else "-" for k, _ in COLUMNS]
    print("| identity (input unchanged) | both | " + " | ".join(identity) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["cyclegan", "pix2pix", "ugatit", "nicegan"])
