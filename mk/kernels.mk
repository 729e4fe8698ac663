# `make test-kernels`: the numerics tests (pytest -m numerics: numbers compared across batch
# shapes, code paths and thread counts) again under other CPU kernels of this same machine, so
# that a test which holds only for one CPU's BLAS / oneDNN / ATen kernels fails here first
# (design §12). Each setting is printed before it runs; every one must pass. Run after `make setup`.
#   make test-kernels KERNEL_SETTINGS="ATEN_CPU_CAPABILITY=default"   one setting of your own
#   (settings are separated by commas; each is a list of VAR=value words)
# (OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads on a shared 2-core machine made that setting
# take 10 min instead of 1; it changes no number.)
KERNEL_SETTINGS ?= ATEN_CPU_CAPABILITY=default ENCLAP_TEST_THREADS=2 OMP_WAIT_POLICY=PASSIVE,MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41,MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2

.PHONY: test-kernels

test-kernels:
	@settings='$(KERNEL_SETTINGS)'; IFS=','; for setting in $$settings; do \
		echo "== test-kernels: $$setting"; \
		( IFS=' '; env $$setting $(PY) -m pytest -q -m numerics tests ) || exit 1; \
	done
