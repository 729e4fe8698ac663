# `make test-transformers5`: the tests that exercise transformers, run under transformers 5.x
# (requirements-transformers5.txt) instead of requirements.txt's 4.57. Included from the Makefile.
# No second venv: the three packages go into an overlay folder (`pip install --target --no-deps`)
# put in front of .venv with PYTHONPATH. Rebuilt only when requirements-transformers5.txt changes.
#   make test-transformers5                          the list below
#   make test-transformers5 T5_TESTS=tests/modeling  any other selection
T5_OVERLAY := .cache/transformers5
T5_STAMP := $(T5_OVERLAY)/.requirements-installed
T5_PY := PYTHONPATH=$(CURDIR)/$(T5_OVERLAY) $(PY)
# Model, generation, loading, training, tokenizer, hub ids, captioning pipeline, the page, the CLIs
# that load checkpoints, generate and train; tests/data/extraction/test_encoders.py for LAION-CLAP's own use of it.
T5_TESTS ?= tests/modeling tests/training tests/captioning tests/data/extraction/test_encoders.py tests/test_gradio.py \
	tests/test_cli_inference.py tests/test_cli_inference_warnings.py tests/test_cli_evaluate.py tests/test_cli_train.py

.PHONY: test-transformers5 transformers5-overlay

$(T5_STAMP): requirements-transformers5.txt $(STAMP)
	rm -rf $(T5_OVERLAY)
	$(PY) -m pip install -q --no-deps --target $(T5_OVERLAY) -r requirements-transformers5.txt
	@touch $@

transformers5-overlay: $(T5_STAMP)

test-transformers5: setup browser $(T5_STAMP)
	@$(T5_PY) -c 'import transformers as t, huggingface_hub as h, tokenizers as k; \
		assert t.__version__.startswith("5."), t.__file__; \
		print("transformers", t.__version__, "huggingface_hub", h.__version__, "tokenizers", k.__version__)'
	$(T5_PY) -m pytest -q $(T5_TESTS)
