# Two commands matter: `make train` and `make test`. Both install into .venv first if needed.
# `make help` lists every target.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# albumentations checks PyPI for updates on import; wandb must not block on a login.
export NO_ALBUMENTATIONS_UPDATE := 1
export PROJECT_ROOT := $(CURDIR)

.PHONY: install install-fid train test bench gpu-wheels clean help

install: $(STAMP)

# constraints.txt keeps the CUDA-only torchvision out of the CPU install (see the file).
# Python 3.11-3.13: the pinned onnxruntime and pillow-heif need 3.11; hydra-core 1.3.8 (the newest)
# fails at startup on 3.14, whose argparse refuses its shell-completion help object.
$(STAMP): requirements.txt constraints.txt
	@py=$(PYTHON); test -x $(PY) && py=$(PY); \
		$$py -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' || \
		{ echo "Python 3.11 to 3.13 is needed ($$py is $$($$py --version 2>&1)): make PYTHON=python3.12 ... (after rm -rf $(VENV) where that is the one)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install -r requirements.txt -c constraints.txt
	touch $(STAMP)

# Inception FID/KID: GPU machines with a CUDA torch (the constraints file is not used here).
install-fid: $(STAMP)
	$(PY) -m pip install -r requirements-fid.txt

train: $(STAMP)
	$(PY) src/train.py experiment=quickstart $(ARGS)

test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q tests $(ARGS)

# Training speed per model configuration (conf/bench.yaml); writes experiments/bench/results.*
bench: $(STAMP)
	$(PY) src/bench.py $(ARGS)

# Wheels of the packages a CUDA machine's python (torch, Lightning, torchmetrics already there)
# lacks, for experiments/bench/gpu_check.sh on a machine that cannot download: carry $(GPU_WHEELS)
# there. Versions as pinned in requirements.txt; compiled ones for CPython $(GPU_PYTHON) on x86-64.
# numpy, scipy and OpenCV are left out: such machines have them, and they are large.
GPU_PYTHON ?= 3.12
GPU_WHEELS ?= .gpu-wheels
GPU_PACKAGES := $(shell grep -E '^(hydra-core|omegaconf|albumentations|pillow-heif)==' requirements.txt)
gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	# omegaconf's parser runtime (antlr4-python3-runtime 4.9.3) is published as source only
	$(PY) -m pip wheel --quiet --no-deps -w $(GPU_WHEELS) antlr4-python3-runtime==4.9.3
	$(PY) -m pip download --quiet --only-binary=:all: --implementation cp --python-version $(GPU_PYTHON) \
		--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
		--find-links $(GPU_WHEELS) -d $(GPU_WHEELS) $(GPU_PACKAGES)
	rm -f $(GPU_WHEELS)/numpy-* $(GPU_WHEELS)/scipy-* $(GPU_WHEELS)/opencv_python*
	printf '%s\n' $(GPU_PACKAGES) > $(GPU_WHEELS)/packages.txt

# Caches only: the runs under logs/ are results (rm -rf logs deletes every run and checkpoint).
clean:
	rm -rf .pytest_cache
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +

help:
	@echo "make install       install the CPU stack into $(VENV) (Python 3.11-3.13; done by the targets below)"
	@echo "make install-fid   Inception FID/KID (torch-fidelity, torchvision): GPU machines with a CUDA torch"
	@echo "make train ARGS=   the quickstart run (experiment=quickstart), ARGS appended: ARGS=\"model=pix2pix\""
	@echo "make test ARGS=    the test suite (pytest -q tests ARGS), about 20 minutes on 2 cores"
	@echo "make bench ARGS=   seconds per iteration and memory per model (src/bench.py; the CPU table takes ~15 min)"
	@echo "make gpu-wheels    wheels a CUDA machine without downloads needs for experiments/bench/gpu_check.sh"
	@echo "make clean         remove caches (not the runs under logs/)"
