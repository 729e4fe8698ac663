# `make demo`: the quick start (scripts/demo.py), after `setup` has created .venv if missing.
# Included from the Makefile (`include mk/demo.mk`).
#   make demo                                               seeded random-weight encoders, outputs in demo_out/
#   make demo CLAP_CKPT=/path/630k-audioset-fusion-best.pt  pretrained EnCodec (encodec's download) + that CLAP
#   make demo DEMO_OUT=/tmp/demo DEMO_ARGS="--num_clips 200 optim.epochs=8"
DEMO_OUT ?= demo_out
CLAP_CKPT ?=
DEMO_ARGS ?=

.PHONY: demo

demo: setup
	$(PY) scripts/demo.py --out $(DEMO_OUT) $(if $(CLAP_CKPT),--clap_ckpt $(CLAP_CKPT)) $(DEMO_ARGS)
