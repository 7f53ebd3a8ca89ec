# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The test suite runs once on SQLite and once on this PostgreSQL (test database test_kumosubmit).
PG_URL ?= postgres://postgres@127.0.0.1:5432/kumosubmit

# Debian packages some tests drive as real peers: HAProxy in front of the listener, Postfix
# as the relay's upstream, Chromium for the pages, Dovecot's doveadm for imported hashes,
# redis-server for the sending limits' Redis backend (the tests start their own on a free port).
SYSTEM_PACKAGES := haproxy postfix chromium dovecot-core redis-server

.PHONY: install system-packages run admin test test-sqlite test-postgres lint screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

## run: set up, migrate the SQLite database, and run the SMTP server on 127.0.0.1:2587
run: $(STAMP)
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py runsmtpd $(ARGS)

## admin: the admin site on http://127.0.0.1:8000/admin/
admin: $(STAMP)
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

test-sqlite: $(STAMP)
	$(BIN)/pytest

test-postgres: $(STAMP)
	DATABASE_URL=$(PG_URL) $(BIN)/pytest

## screenshots: retake docs/screenshots/ with the browser test
screenshots: $(STAMP)
	KUMOSUBMIT_SCREENSHOTS=docs/screenshots $(BIN)/pytest tests/web/test_browser.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) var
