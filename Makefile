# Two commands do everything on a fresh Debian machine:
#   make demo   the end-to-end story (sample CA, SoftHSM2 card, SQLite inventory)
#   make test   the whole test suite
# Both install what they need first: Debian packages (apt-get), .venv, the package.

PYTHON ?= python3
VENV := .venv
DEBIAN_PACKAGES := softhsm2 opensc openssh-client openssh-server openssl postgresql iproute2 util-linux procps python3 python3-venv
PYTEST_ARGS ?=

.PHONY: demo test lint setup debian-packages venv bench clean

demo: setup
	$(VENV)/bin/python sample-ca/demo.py

test: setup lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy identity validator cli

setup: debian-packages venv

# Install only what is missing; as root directly, otherwise through sudo.
debian-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "== installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# setuptools notes that an editable install's folders "may take precedence during imports"
# (no folder here is named idm, so none can): PYTHONWARNINGS filters that one note.
$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' $(VENV)/bin/python -m pip install -q -e '.[test,dev]'
	@touch $@

venv: $(VENV)/.installed

# Each benchmark compares against its named peer in the same run (docs/performance.md).
bench: setup
	$(VENV)/bin/python bench/inventory.py
	$(VENV)/bin/python bench/verify_crl.py
	$(VENV)/bin/python bench/authorized_keys.py
	$(VENV)/bin/python bench/agent_sign.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
