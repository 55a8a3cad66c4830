# nonstop: `make run` starts the server on the embedded default config; `make test` runs the whole suite.
# Both install what they need first, on a fresh Debian machine with Python 3.11 and root.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
PYTEST_ARGS ?=

.PHONY: install run test test-long test-deps test-kustomize-v2 clean console-vendor

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { apt-get update -q && $(APT_INSTALL) python3-venv; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	@touch $@

run: install
	$(VENV)/bin/nonstop

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(PIP) install -q -e '.[test]'
	@touch $@

# Debian packages the end-to-end tests drive: ffmpeg/ffprobe as clients, nginx-rtmp as a peer server; for the
# Kubernetes tests, kubectl (its `kustomize`; Debian's kubernetes-client only when no kubectl is installed) and
# haproxy, which plays the Service in the rollout simulation; GStreamer (gst-launch-1.0 with rtmpsrc from
# plugins-bad, flvdemux from plugins-good) as a third-party RTMP client; chromium, headless, for the console and
# player tests (driven over the DevTools protocol by tests/browser.py: no browser download).
GST_PACKAGES := gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
DEB_TEST_PACKAGES := ffmpeg nginx libnginx-mod-rtmp kubernetes-client haproxy chromium $(GST_PACKAGES)

# The HLS tests play with hls.js in headless Chromium (and GStreamer's hlsdemux): hls.js comes from npm into build/.
HLSJS_VERSION := 1.7.4
HLSJS := build/npm/node_modules/hls.js/dist/hls.min.js

test-deps: $(TEST_STAMP)
	@missing=""; \
	command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing="$$missing ffmpeg"; \
	command -v nginx >/dev/null || missing="$$missing nginx"; \
	test -f /usr/lib/nginx/modules/ngx_rtmp_module.so || missing="$$missing libnginx-mod-rtmp"; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || missing="$$missing haproxy"; \
	command -v gst-launch-1.0 >/dev/null || missing="$$missing $(GST_PACKAGES)"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	gst-inspect-1.0 hlsdemux >/dev/null 2>&1 || missing="$$missing gstreamer1.0-plugins-bad gstreamer1.0-plugins-good"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then apt-get update -q && $(APT_INSTALL) $$missing; fi
	@test -f $(HLSJS) || npm install --no-save --no-audit --no-fund --prefix build/npm hls.js@$(HLSJS_VERSION)

# The manifests must also build with Debian's kubectl 1.20 (kustomize v2) when another kubectl is installed:
# its package is unpacked into the venv (not installed) and the manifest tests compare the two builds.
LEGACY_KUBECTL := $(VENV)/kubernetes-client/usr/bin/kubectl
$(LEGACY_KUBECTL): $(STAMP)
	rm -rf $(VENV)/kubernetes-client && mkdir -p $(VENV)/kubernetes-client
	cd $(VENV)/kubernetes-client && { apt-get download kubernetes-client 2>/dev/null || \
		{ apt-get update -q && apt-get download kubernetes-client; }; } && dpkg -x kubernetes-client_*.deb .

# tests/unit runs on both cores (pytest-xdist, --dist worksteal: 31 s against 47 s serially), then tests/e2e
# serially: its timing bounds need the cores. Both run whatever the first gave; the target fails if either failed
# (not when a PYTEST_ARGS -k selects nothing in one: pytest's exit 5). Property tests fuzz at most 100 examples
# each here (tests/conftest.py); test-long runs them again at the counts written in the tests.
test: test-deps $(LEGACY_KUBECTL)
	@status=0; \
	$(PY) -m pytest -q -m 'not long' -n 2 --dist worksteal $(PYTEST_ARGS) tests/unit || { rc=$$?; [ $$rc = 5 ] || status=$$rc; }; \
	KUBECTL_EXTRA=$(abspath $(LEGACY_KUBECTL)) $(PY) -m pytest -q -m 'not long' $(PYTEST_ARGS) tests/e2e || { rc=$$?; [ $$rc = 5 ] || status=$$rc; }; \
	exit $$status

test-kustomize-v2: test-deps $(LEGACY_KUBECTL)
	KUBECTL_EXTRA=$(abspath $(LEGACY_KUBECTL)) $(PY) -m pytest -q $(PYTEST_ARGS) tests/e2e/test_k8s_manifests.py

test-long: test-deps
	@status=0; \
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -q -m 'not long' -n 2 --dist worksteal $(PYTEST_ARGS) tests/unit || { rc=$$?; [ $$rc = 5 ] || status=$$rc; }; \
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -q -m long $(PYTEST_ARGS) tests || status=$$?; \
	exit $$status

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# The player's libraries, shipped built inside the package (nonstop/console/vendor/, committed; no CDN at run
# time). This refreshes them from npm at the pinned versions; bump a version here, run it, commit the result.
MPEGTS_JS_VERSION := 1.8.2
HLS_JS_VERSION := 1.7.4
CONSOLE_VENDOR := nonstop/console/vendor
console-vendor:
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack -q mpegts.js@$(MPEGTS_JS_VERSION) hls.js@$(HLS_JS_VERSION) >/dev/null && \
	mkdir m h && tar xzf mpegts.js-$(MPEGTS_JS_VERSION).tgz -C m && tar xzf hls.js-$(HLS_JS_VERSION).tgz -C h && \
	cd $(CURDIR) && mkdir -p $(CONSOLE_VENDOR) && \
	cp $$tmp/m/package/dist/mpegts.js $(CONSOLE_VENDOR)/mpegts.js && \
	cp $$tmp/m/package/LICENSE $(CONSOLE_VENDOR)/LICENSE.mpegts.js && \
	cp $$tmp/m/package/dist/mpegts.js.LICENSE.txt $(CONSOLE_VENDOR)/mpegts.js.LICENSE.txt && \
	cp $$tmp/h/package/dist/hls.light.min.js $(CONSOLE_VENDOR)/hls.light.min.js && \
	cp $$tmp/h/package/LICENSE $(CONSOLE_VENDOR)/LICENSE.hls.js && \
	printf 'mpegts.js %s (dist/mpegts.js)\nhls.js %s (dist/hls.light.min.js)\n' $(MPEGTS_JS_VERSION) $(HLS_JS_VERSION) \
		> $(CONSOLE_VENDOR)/VERSIONS && rm -rf $$tmp && echo "refreshed $(CONSOLE_VENDOR)"
