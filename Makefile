# Every target does the set-up it needs first and is safe to run again.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench db-start db-stop clean

setup: $(VENV)/.installed jars/.fetched pgbuilds/.fetched jars/.archived

$(VENV)/.installed: requirements.txt setup.py
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# JDBC driver and Delta jars, fetched once from Maven Central; runs never need the network.
jars/.fetched: build/jars-pom.xml
	mvn -q -B -f build/jars-pom.xml dependency:copy-dependencies \
	    -DoutputDirectory=$(CURDIR)/jars -DexcludeTransitive=true
	touch $@

# Spark's classes archived once (JDK class data sharing, lib/widen/class_archive.py): a job's JVM starts
# seconds sooner. A JDK that cannot write or use one leaves none, and jobs start as they would without.
jars/.archived: $(VENV)/.installed jars/.fetched
	$(PY) -m widen.class_archive jars || echo "widen: no class archive; jobs start without one"
	touch $@

# Old PostgreSQL server builds (9.3 … 13) for tests/test_old_servers.py, fetched once from Maven
# Central and unpacked into pgbuilds/<version>/.
pgbuilds/.fetched: build/pg-servers-pom.xml $(VENV)/.installed
	mvn -q -B -f build/pg-servers-pom.xml dependency:copy -Dpgbuilds=$(CURDIR)/pgbuilds
	$(PY) -m widen.embedded unpack pgbuilds
	touch $@

demo: setup
	./spark-submit.sh demo --config conf/local.yaml

test: setup
	$(VENV)/bin/ruff check lib tests bench jobs notebooks
	$(VENV)/bin/mypy
	$(PY) -m pytest --durations=40 $(PYTEST_ARGS) tests

# No database, no Spark (tests marked unit in tests/conftest.py): lint, types and the pure tests.
test-fast: setup
	$(VENV)/bin/ruff check lib tests bench jobs notebooks
	$(VENV)/bin/mypy
	$(PY) -m pytest -m unit $(PYTEST_ARGS) tests

bench: setup
	$(PY) bench/backfill.py
	$(PY) bench/stream.py
	$(PY) bench/reconcile.py
	$(PY) bench/rollback.py
	$(PY) bench/query.py

db-start: setup
	$(PY) -m widen.embedded start

db-stop:
	$(PY) -m widen.embedded stop

clean: db-stop
	rm -rf .local build/widen.zip build/widen-*.zip
