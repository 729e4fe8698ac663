# Debian chromium + chromedriver for the demo's browser test (tests/test_gradio.py).
# Include from the Makefile (`include mk/browser.mk`) and make `test` depend on `browser`.
# Idempotent: installs only when /usr/bin/chromium or /usr/bin/chromedriver is missing.
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
APT_GET ?= $(shell command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo) apt-get

.PHONY: browser

browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then \
		echo "chromium and chromedriver present"; \
	else \
		$(APT_GET) update && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y --no-install-recommends chromium chromium-driver; \
	fi
