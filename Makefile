# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What `make run` needs (the app, the example project's extras, psycopg for a PostgreSQL
# DATABASE_URL), and what `make test` needs besides (the test tools); pyproject.toml's extras.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# The test suite runs once on SQLite and once on this PostgreSQL (test database test_kumosubmit).
PG_URL ?= postgres://postgres@127.0.0.1:5432/kumosubmit

# Debian packages some tests drive as real peers: HAProxy in front of the listener, Postfix
# as the relay's upstream, Chromium for the pages, Dovecot's doveadm for imported hashes,
# redis-server for the sending limits' Redis backend (the tests start their own on a free port),
# msmtp and curl as OAuth mail clients.
SYSTEM_PACKAGES := haproxy postfix chromium dovecot-core redis-server msmtp curl

.PHONY: install system-packages run admin test test-sqlite test-postgres lint screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[site,postgres]'
	touch $@

# The dev extra includes site and postgres, so it also satisfies `make run`.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

## install: the virtualenv with everything, tests included
install: $(DEV_STAMP)

## run: set up, migrate the SQLite database, and run the SMTP server on 127.0.0.1:2587
run: $(RUN_STAMP)
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py runsmtpd $(ARGS)

## admin: the admin site on http://127.0.0.1:8000/admin/
admin: $(RUN_STAMP)
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py runserver 127.0.0.1:8000

## system-packages: install SYSTEM_PACKAGES that are missing (as root, with apt)
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
	    echo "Not installed: $$missing (tests that need them are skipped)"; \
	fi

## test: set up, then lint and run the whole suite on SQLite and on PostgreSQL
test: system-packages lint test-sqlite test-postgres

test-sqlite: $(DEV_STAMP)
	$(BIN)/pytest

test-postgres: $(DEV_STAMP)
	DATABASE_URL=$(PG_URL) $(BIN)/pytest

## screenshots: retake docs/screenshots/ with the browser test
screenshots: $(DEV_STAMP)
	KUMOSUBMIT_SCREENSHOTS=docs/screenshots $(BIN)/pytest tests/web/test_browser.py \
	    tests/web/test_browser_second_factor.py tests/web/test_browser_dashboard.py

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) var
