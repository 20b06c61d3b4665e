"""Evaluate a checkpoint on a test split: `python src/eval.py ckpt_path=... [data=...]`.

Translates the whole test split in both directions the model supports, writes one PNG per
source file (`fakeB/<A name>.png` for translations into the dataset's B domain, `fakeA/<B name>.png`
into its A: folders take the dataset's letters, so with data.direction=BtoA, facades' labels ->
photo translations, the model's AtoB, land in fakeA/, where the photos are the dataset's A; the
training grid's rows take the model's letters, as the references' visualizers), computes every metric
available for the data (FID and KID x100 always; on the embedded shapes data also the ground
truth: IoU, colour error, L1, PSNR, SSIM and the identity baseline), writes `metrics.json` and
prints a markdown table row.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python src/eval.py` from the root

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.utils.evaluation import run_evaluation  # noqa: E402
from src.utils.library_warnings import library_output_into_the_log  # noqa: E402
from src.utils.log_file import error_into_the_log_file  # noqa: E402
from src.utils.process_state import threads_within_usable_cpus  # noqa: E402
from src.utils.run import release_failed_run  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    library_output_into_the_log()
    threads_within_usable_cpus()   # (the command's process: a notebook's run_evaluation keeps its own count)
    try:
        run_evaluation(cfg)
    except Exception as error:
        error_into_the_log_file(error, "Evaluation")
        release_failed_run(error)   # `eval.py -m ckpt_path=a,b`: the next checkpoint is scored beside it
        raise


if __name__ == "__main__":
    main()
