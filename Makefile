# Two commands matter: `make run` (a sandboxed agent with real smbd on loopback) and
# `make test` (every test, real components included). Both set themselves up.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := samba smbclient systemd-container debootstrap python3-venv python3-gi \
	python3-pydbus iproute2 procps debhelper dh-python pybuild-plugin-pyproject python3-all \
	lintian man-db prometheus prometheus-alertmanager btrfs-progs zfs-fuse \
	qemu-system-x86 qemu-utils xfsprogs quota restic lxc uidmap \
	python3-configobj python3-jsonschema python3-jsonpatch python3-netifaces cloud-image-utils dnsmasq-base \
	bindfs
DEBIAN_PY_PACKAGES := python3-pluggy python3-prometheus-client python3-pyroute2 \
	python3-watchdog python3-jinja2 python3-pytest python3-hypothesis python3-yaml
STAMP := $(VENV)/.installed

.PHONY: run test test-long unit integration lint typecheck check deps venv bench clean test-debian test-trixie

deps:
	@missing=$$(for p in $(APT_PACKAGES) $(DEBIAN_PY_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root (apt-get install $$missing)"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | deps
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
	touch $(STAMP)

venv: deps $(STAMP)

run: venv
	$(PY) -m devtools.sandbox --root sandbox --port 4450

lint: venv
	$(VENV)/bin/ruff check smbgw_agent plugins devtools tests bench

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest tests/unit -q

integration: venv
	$(PY) -m pytest tests/integration -q

# The unit tests, the plugin conformance suite and the core serving tests once more
# against Debian's own python3-* packages (pluggy 1.0, prometheus-client 0.16, pyroute2
# 0.7.2, watchdog 2.2, pytest 7): what the .deb runs with. No virtualenv:
# /usr/bin/python3 with PYTHONPATH=. only.
test-debian: deps
	PYTHONPATH=. /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/unit tests/conformance \
		tests/integration/test_native_serving.py tests/integration/test_security_profile.py

# The same pass on Debian 13 "trixie" (Proxmox VE 9): in a booted trixie container built
# once by debootstrap (cached by content under /var/lib/machines, shared with the .deb
# end-to-end test of trixie), with trixie's python3-*, Samba and systemd.
test-trixie: deps
	PYTHONPATH=. /usr/bin/python3 -m tests.support.releases trixie

# The 30 slowest cases are listed at the end: CI has 90 minutes, and this is where to
# look when a run comes near them.
test: venv lint typecheck test-debian test-trixie
	$(PY) -m pytest -q -m "not long" --durations=30

# The long runs, not part of `make test` (CI): the model-based reconciler test with 200
# random examples of up to 30 steps each against real smbd (about 40 minutes), every
# parser's property test and 10,000 generated share files and agent.toml files through a
# real pass (CI: 1,000 each), 200 SIGKILLs among passes over up to 1,000 shares (CI: 30
# over 300), and the load test for the full 60 s of 100 changes per second on 500 shares
# (CI runs 20 s; about 1.5 minutes). First, the VM mode's cases, each an emulated (TCG)
# boot of a minute or more, which would take CI past its 90-minute budget.
test-long: venv
	$(PY) -m pytest -q -m long
	SMBGW_MODEL_EXAMPLES=200 SMBGW_MODEL_STEPS=30 $(PY) -m pytest -q -s tests/reliability/test_model_reconciler.py
	SMBGW_PROPERTY_EXAMPLES=10000 $(PY) -m pytest -q tests/unit/test_parser_properties.py
	SMBGW_GENERATED_EXAMPLES=10000 $(PY) -m pytest -q tests/reliability/test_generated_input.py
	SMBGW_KILLS=200 SMBGW_KILL_SHARES=1000 $(PY) -m pytest -q -s tests/reliability/test_crash_safety.py
	SMBGW_LOAD_SECONDS=60 $(PY) -m pytest -q -s tests/reliability/test_load.py

bench: venv
	$(PY) bench/latency.py

clean:
	rm -rf $(VENV) sandbox .mypy_cache .ruff_cache .pytest_cache

# The Debian package: built with dpkg-buildpackage in a copy of the tree under
# build/deb/src (so the checkout gets no debhelper leftovers and other work in progress
# is not disturbed); the .deb, .buildinfo and .changes end up in build/deb/.
DEB_DIR := build/deb
.PHONY: deb
deb: deps
	rm -rf $(DEB_DIR)
	mkdir -p $(DEB_DIR)/src
	tar -c --exclude=./.git --exclude=./build --exclude=./sandbox --exclude='./.venv*' \
		--exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache \
		--exclude=.pytest_cache --exclude='*.egg-info' --exclude=./debian/.debhelper \
		--exclude=./debian/smbgw-agent --exclude=./debian/files --exclude='./debian/*.substvars' \
		--exclude='./debian/*.log' --exclude=./.pybuild . | tar -x -C $(DEB_DIR)/src
	# Debian's own python3 and tools, not a virtualenv's or pyenv's found first on PATH.
	cd $(DEB_DIR)/src && env -u PYTHONPATH -u VIRTUAL_ENV -u PYTHONHOME \
		PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	rm -rf $(DEB_DIR)/src
	@ls -1 $(DEB_DIR)

# Scrape latency of /metrics with 2,000 shares (median and p99; target under 100 ms).
.PHONY: bench-scrape
bench-scrape: venv
	$(PY) bench/scrape.py

# What one poll of shares.d costs at 2,000 files: the entries compared, or pmxcfs' .version.
.PHONY: bench-poll
bench-poll: venv
	$(PY) bench/poll.py

# What the per-pass path checks cost at 2,000 shares, against validating every path anew.
.PHONY: bench-guard
bench-guard: venv
	$(PY) bench/guard.py

# Failover of a public address in the 3-node CTDB cluster: 10 pulled cables (median, max),
# against CTDB's default keepalives. Root; ~10 minutes.
.PHONY: bench-failover
bench-failover: venv
	$(PY) bench/failover.py

# AD: from [ad] in agent.toml to a domain user served (median of 5) against joining by
# hand, and the CPU of the membership checks. Root; ~5 minutes (the AD lab).
.PHONY: bench-ad
bench-ad: venv
	$(PY) bench/ad.py

# LXC mode through the pct test stand-in over real LXC: file dropped -> served through
# the container (median of 5, native mode as the peer) and an edit -> live.
.PHONY: bench-lxc
bench-lxc: venv
	$(PY) bench/lxc.py

# VM mode through the qm/pvesh test stand-ins over QEMU (TCG): file dropped -> served
# through the VM (median of 3, native mode as the peer), an edit -> live, and how much of
# it is the guest's boot under TCG. Root; ~4 minutes (the guest image built on first use).
.PHONY: bench-vm
bench-vm: venv
	$(PY) bench/vm.py
