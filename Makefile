# seqscore — the plain entry points. `make test` and `make demo` need nothing set up first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test unit demo up down status lint schemas quality clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test:                       ## everything: unit, integration and fault tests on the real stack
	tests/run

unit: venv                  ## unit tests only, no servers
	$(PY) -m pytest tests/unit

demo: venv                  ## the main job end to end on a local default
	deploy/install-deps
	deploy/demo

up:                         ## start the local Kafka + Redis
	deploy/install-deps
	deploy/stack up

down:
	deploy/stack down

status:
	deploy/stack status

lint: venv
	$(VENV)/bin/ruff check consumer state training tests
	$(VENV)/bin/mypy

schemas: venv
	$(VENV)/bin/seqscore schemas

quality: venv               ## docs/quality.md: default training on the simulator and the real logs in DATA
	$(PY) -m training.quality --data $(or $(DATA),../shared/data) --out docs/quality.md

clean:
	deploy/stack wipe
	rm -rf $(VENV) deploy/.cache
