# Two commands do everything on a fresh Debian machine:
#   make demo   the end-to-end story (sample CA, SoftHSM2 card, SQLite inventory)
#   make test   the whole test suite
# Both install what they need first: Debian packages (apt-get), .venv, the package.
#
#   make install [PREFIX=/opt/idm]   idm for a server or a client (docs/server.md, "Install")

PYTHON ?= python3
VENV := .venv
DEBIAN_PACKAGES := softhsm2 opensc openssh-client openssh-server openssl postgresql iproute2 util-linux procps python3 python3-venv systemd groff-base build-essential autoconf automake libssl-dev zlib1g-dev
# The suite runs on every core (at most 4 workers: each starts its own tokens, sshd and
# PostgreSQL); PYTEST_ARGS= runs it in one process.
PYTEST_ARGS ?= -n auto --maxprocesses=4

# Where `make install` puts things. PREFIX holds a virtual environment of the system's
# Python with idm in it; BINDIR/idm links to its entry point (the path sshd_config and the
# systemd units name). sshd runs the helper only if it and every folder above it are
# root-owned and not group/world-writable: install as root, to folders like these.
PREFIX ?= /opt/idm
BINDIR ?= /usr/local/bin
MANDIR ?= /usr/local/share/man
BASHCOMPDIR ?= /usr/local/share/bash-completion/completions
SYSTEMDDIR ?= /etc/systemd/system
SYSTEMDUSERDIR ?= /etc/systemd/user
INSTALL_EXTRAS ?= postgresql
SYSTEM_PYTHON ?= /usr/bin/python3
INSTALL_PACKAGES := python3 python3-venv
UNITS := idm-refresh.service idm-refresh.timer
USER_UNITS := idm-agent.service

.PHONY: demo test lint setup debian-packages install-packages venv install uninstall bench clean

demo: setup
	$(VENV)/bin/python sample-ca/demo.py

test: setup lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy identity validator cli

setup: debian-packages venv

# Install only what is missing; as root directly, otherwise through sudo.
apt_install = @missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "== installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

debian-packages:
	$(call apt_install,$(DEBIAN_PACKAGES))

install-packages:
	$(call apt_install,$(INSTALL_PACKAGES))

# setuptools notes that an editable install's folders "may take precedence during imports"
# (no folder here is named idm, so none can): PYTHONWARNINGS filters that one note.
$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' $(VENV)/bin/python -m pip install -q -e '.[test,dev]'
	@touch $@

venv: $(VENV)/.installed

install: install-packages
	$(SYSTEM_PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/python -m pip install -q '.[$(INSTALL_EXTRAS)]'
	chmod -R a+rX,go-w $(PREFIX)
	install -d -m 0755 $(BINDIR) $(MANDIR)/man1 $(BASHCOMPDIR) $(SYSTEMDDIR) $(SYSTEMDUSERDIR)
	ln -sfn $(PREFIX)/bin/idm $(BINDIR)/idm
	$(PREFIX)/bin/python -m idm.cli.manpages $(MANDIR)/man1 | xargs chmod 0644
	_IDM_COMPLETE=bash_source $(PREFIX)/bin/idm > $(BASHCOMPDIR)/idm
	chmod 0644 $(BASHCOMPDIR)/idm
	for u in $(UNITS); do sed 's|/usr/local/bin/idm|$(BINDIR)/idm|g' systemd/$$u > $(SYSTEMDDIR)/$$u; done
	for u in $(USER_UNITS); do sed 's|/usr/local/bin/idm|$(BINDIR)/idm|g' systemd/$$u > $(SYSTEMDUSERDIR)/$$u; done
	cd $(SYSTEMDDIR) && chmod 0644 $(UNITS)
	cd $(SYSTEMDUSERDIR) && chmod 0644 $(USER_UNITS)
	@echo "installed: $(BINDIR)/idm -> $(PREFIX)/bin/idm; units in $(SYSTEMDDIR) and $(SYSTEMDUSERDIR)"
	@echo "next: /etc/idm/config.toml, sshd_config and the timer (docs/server.md)"

uninstall:
	rm -f $(BINDIR)/idm $(BASHCOMPDIR)/idm $(MANDIR)/man1/idm.1 $(MANDIR)/man1/idm-*.1
	cd $(SYSTEMDDIR) && rm -f $(UNITS)
	cd $(SYSTEMDUSERDIR) && rm -f $(USER_UNITS)
	rm -rf $(PREFIX)

# Each benchmark compares against its named peer in the same run (docs/performance.md).
bench: setup
	$(VENV)/bin/python bench/inventory.py
	$(VENV)/bin/python bench/verify_crl.py
	$(VENV)/bin/python bench/authorized_keys.py
	$(VENV)/bin/python bench/agent_sign.py
	$(VENV)/bin/python bench/agent_held.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
