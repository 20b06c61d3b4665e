# Two commands matter: `make train` and `make test`. Both install into .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# albumentations checks PyPI for updates on import; wandb must not block on a login.
export NO_ALBUMENTATIONS_UPDATE := 1
export PROJECT_ROOT := $(CURDIR)

.PHONY: install install-fid train test bench clean

install: $(STAMP)

# constraints.txt keeps the CUDA-only torchvision out of the CPU install (see the file).
$(STAMP): requirements.txt constraints.txt
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

clean:
	rm -rf logs .pytest_cache
