# Two commands for a newcomer: `make run` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
HOST ?= 127.0.0.1
PORT ?= 8080
DEMO_DIR := demo-images

.PHONY: setup setup-test run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml scripts/system-deps.sh | $(BIN)/python
	./scripts/system-deps.sh
	$(BIN)/pip install -q -e '.[client,tools]'
	touch $@

$(VENV)/.installed-test: pyproject.toml scripts/system-deps.sh $(VENV)/.installed
	./scripts/system-deps.sh --test
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(DEMO_DIR)/demo.jp2: | $(VENV)/.installed
	mkdir -p $(DEMO_DIR)
	$(BIN)/python -m filetools.demo $(DEMO_DIR)/demo.jp2

run: $(VENV)/.installed $(DEMO_DIR)/demo.jp2
	@echo "serving $(DEMO_DIR) on http://$(HOST):$(PORT)"
	@echo "try: curl -s -o thumb.jpp 'http://$(HOST):$(PORT)/jpip?target=demo.jp2&fsiz=256,256&type=jpp-stream' -D -"
	$(BIN)/jpip-server --root $(DEMO_DIR) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	JPIP_SHARED=$(SHARED) $(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

bench: $(VENV)/.installed-test
	JPIP_SHARED=$(SHARED) $(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
