# The targets README and CI call. Each bootstraps .venv on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000
SOCKETIO := bench/baselines/socketio

.PHONY: run worker beat test lint bench services browsers clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools  # venv's setuptools 65 has known CVEs
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The app on the embedded default (SQLite, in-memory channel layer) at http://$(HOST):$(PORT)
run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo_users
	DEBUG=$${DEBUG:-1} DJANGO_SETTINGS_MODULE=project.settings_dev $(BIN)/python manage.py runserver $(HOST):$(PORT)

# The Celery worker (project/celery.py) with beat embedded (-B: the periodic chores), for local
# use: it needs a broker, CELERY_BROKER_URL or REDIS_URL (without one `make run` runs tasks
# in-process). Production runs `make beat` once and as many workers as it needs.
worker: $(STAMP)
	@mkdir -p var
	$(BIN)/celery -A project worker -B -l info

# Celery beat alone: exactly one per deployment, or each chore runs once per beat.
beat: $(STAMP)
	@mkdir -p var
	$(BIN)/celery -A project beat -l info

# Server binaries the tests start throwaway copies of (never the machine's running ones).
services:
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -q && apt-get install -yq redis-server; }
	@command -v memcached >/dev/null 2>&1 || { apt-get update -q && apt-get install -yq memcached; }  # tests/test_cache.py
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -q && apt-get install -yq postgresql; }
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -yq chromium; }  # tests/browser/
	@test -x /usr/sbin/haproxy || { apt-get update -q && apt-get install -yq haproxy; }  # make cluster
	@command -v prometheus >/dev/null 2>&1 || { apt-get update -q && apt-get install -yq --no-install-recommends prometheus; }
	@command -v promtool >/dev/null 2>&1 || { apt-get update -q && apt-get install -yq --no-install-recommends prometheus; }  # tests/test_k8s.py
	@command -v wrk >/dev/null 2>&1 || { apt-get update -q && apt-get install -yq wrk; }  # bench/http_api.py

# Tools with dependencies that clash with the app's pins, in their own venv: checkov (its
# pins of packaging, boto3 and others would change .venv). tests/test_k8s.py runs it.
TOOLS := .venv-tools
$(TOOLS)/.installed-checkov-3.3.30:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet checkov==3.3.30
	rm -f $(TOOLS)/.installed-*
	touch $@

.PHONY: tools
tools: $(TOOLS)/.installed-checkov-3.3.30

# The Socket.IO baseline's packages too: tests/test_bench_socketio.py keeps make bench's fourth
# target from rotting.
test: $(STAMP) services tools $(SOCKETIO)/node_modules/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports  # the layers of docs/architecture.md, as [tool.importlinter] contracts
	$(BIN)/hadolint Dockerfile  # settings in .hadolint.yaml
	$(BIN)/shellcheck deploy/entrypoint.sh
	$(BIN)/actionlint -shellcheck $(BIN)/shellcheck .github/workflows/*.yml

# Security audit: insecure code patterns (bandit; its skips and why are in pyproject.toml), then
# known-vulnerable installed packages (pip-audit). The development and CI machines reach no
# vulnerability service, so there it reports every package as not audited; see docs/security.md.
.PHONY: audit
audit: $(STAMP)
	$(BIN)/bandit -q -r project web realtime loadtest -c pyproject.toml
	@mkdir -p var
	# Fails on any known-vulnerable dependency. A dependency the vulnerability service has no
	# answer for is listed as not audited; PIP_AUDIT_STRICT=1 makes that fail too.
	$(BIN)/pip-audit --skip-editable --progress-spinner off --desc on -f json -o var/pip-audit.json \
		$${PIP_AUDIT_STRICT:+--strict}
	@$(BIN)/python -c 'import json; d = json.load(open("var/pip-audit.json"))["dependencies"]; \
		s = [x["name"] for x in d if "skip_reason" in x]; \
		print(f"make audit: pip-audit checked {len(d) - len(s)} of {len(d)} dependencies" \
		+ (f"; NOT AUDITED (no answer from the vulnerability service): {len(s)}" if s else ""))'

# The Socket.IO baseline's packages (bench/baselines/socketio/), exactly as its committed
# package-lock.json pins them (SOCKETIO is set at the top: `test` needs them too).
$(SOCKETIO)/node_modules/.installed: $(SOCKETIO)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make bench needs Node 20 and npm"; exit 1; }
	cd $(SOCKETIO) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The benchmark suite on this machine's loopback; writes docs/benchmarks.md (40 minutes at most,
# bench/run.py's --max-minutes; scenario 1 with Socket.IO, from npm, took 11 of them),
# then the presence scenario (bench/presence.py: a room of 1,000 members joining) adds its table,
# and so do the HTTP API (bench/http_api.py) and Redis Cluster ones (bench/cluster_load.py:
# many rooms on one Redis and on 3 shards, about 3 minutes).
# QUICK=1 is a smoke version of the same scenarios, a few minutes long.
bench: $(STAMP) services $(SOCKETIO)/node_modules/.installed
	$(BIN)/python -m bench.run $(if $(QUICK),--quick) --command "make bench$(if $(QUICK), QUICK=1)"
	$(BIN)/python -m bench.presence $(if $(QUICK),--members 200) --append docs/benchmarks.md
	$(BIN)/python -m bench.http_api $(if $(QUICK),--quick) --append docs/benchmarks.md
	$(BIN)/python -m bench.cluster_load $(if $(QUICK),--quick) --append docs/benchmarks.md

# A local multi-pod cluster on loopback (docs/operations.md): PODS uvicorn pods behind HAProxy,
# their own PostgreSQL and Redis, a Celery worker and Prometheus, started detached from
# var/cluster/ (python -m cluster). CLUSTER_PORT is HAProxy's (default 8800).
PODS ?= 3
.PHONY: cluster cluster-stop cluster-status cluster-add cluster-drain cluster-kill cluster-restart
cluster: $(STAMP) services
	$(BIN)/python -m cluster start --pods $(PODS) $(if $(CLUSTER_PORT),--port $(CLUSTER_PORT))

cluster-stop cluster-status cluster-add: $(STAMP)
	$(BIN)/python -m cluster $(@:cluster-%=%)

# POD=2: the pod's number, as `make cluster-status` lists it.
cluster-drain cluster-kill cluster-restart: $(STAMP)
	@test -n "$(POD)" || { echo "which pod? make $@ POD=2"; exit 2; }
	$(BIN)/python -m cluster $(@:cluster-%=%) $(POD)

clean:
	rm -rf $(VENV) $(TOOLS) var $(SOCKETIO)/node_modules
