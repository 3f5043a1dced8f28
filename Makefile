# Everyday commands. `make demo` and `make test` do all set-up themselves (scripts/setup.sh).
PY := .venv/bin/python
export QT_QPA_PLATFORM := offscreen
export PYTHONPATH := $(CURDIR)

.PHONY: setup demo test test-all lint typecheck package benchmarks desktop-screenshot

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) scripts/run_demo.py

test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy engine training bicorseg_qgis
	.venv/bin/lint-imports
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy engine training bicorseg_qgis

package: setup
	$(PY) scripts/package_plugin.py

benchmarks: setup
	$(PY) -m benchmarks.engine_throughput && $(PY) -m benchmarks.engine_memory && $(PY) benchmarks/models_cpu.py --quick

desktop-screenshot: setup
	$(PY) scripts/desktop_screenshot.py --output docs/plugin-desktop.png
