# bids_m2i developer commands. `make demo` and `make test` work on a fresh machine (Python 3.11).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo
DEMO_OUT ?= demo_out
DEMO_WORK ?= demo_work

.PHONY: install demo test test-all test-infra lint docs clean-demo

# The install steps are the same in the README, .ci/run (through `make test`) and the Dockerfile.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test,docs]'
	touch $@

install: $(VENV)/.installed

# Simulate the demo dataset, then run the participant and group levels on it.
demo: install
	$(BIN)/m2i-simulate $(DEMO_DIR) --preset demo --seed 0 --overwrite
	$(BIN)/m2i $(DEMO_DIR) $(DEMO_OUT) participant -w $(DEMO_WORK) --target pixels text
	$(BIN)/m2i $(DEMO_DIR) $(DEMO_OUT) group -w $(DEMO_WORK)
	@echo "Open $(DEMO_OUT)/sub-01.html in a browser."

test: install
	bash scripts/install-system-deps.sh
	$(BIN)/python -m pytest -ra --durations=15

# the slow tests too (nsd-like simulation, large workflows, and, as root, a real single-node SLURM and a
# real image build with buildah: those install slurm-wlm, munge, buildah and debootstrap themselves)
test-all: install
	bash scripts/install-system-deps.sh
	$(BIN)/python -m pytest -ra -m "slow or not slow"

# only the deployment tests on real infrastructure (SLURM first; the image build takes ~10 min and ~7 GB)
test-infra: install
	$(BIN)/python -m pytest -ra -m "slow or not slow" tests/test_infra_slurm.py tests/test_infra_image.py

docs: install
	$(BIN)/mkdocs build --strict --site-dir site

clean-demo:
	rm -rf $(DEMO_DIR) $(DEMO_OUT) $(DEMO_WORK)
