# wgdisco — two commands on a fresh Debian 12 machine:
#   make demo   build a lab of network namespaces and show discovery + NAT traversal
#   make test   the whole test suite (as root, the network-namespace tests run too)
# Both bootstrap the machine themselves: Debian packages (when root) and a .venv.
# While working on the code: make test-fast (tests/unit only: no root, no namespaces, < 1 min).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

# The real parts the tests and the demo run: wireguard-go + wg for interop, STUN
# servers, Knot for RFC 2136, Avahi for mDNS interop, nftables NAT routers, iperf3,
# miniupnpd (UPnP IGD, NAT-PMP, PCP on a lab router) with the upnpc and natpmpc clients.
APT_PACKAGES := iproute2 iputils-ping nftables procps psmisc wireguard-go wireguard-tools \
	iperf3 stun-server coturn knot knot-dnsutils avahi-daemon avahi-utils dbus \
	bind9-dnsutils netcat-openbsd miniupnpd-nftables miniupnpc natpmpc

.PHONY: all test test-fast demo bench bench-smoke fuzz bootstrap system-deps venv clean lab-clean

all: test

bootstrap: system-deps venv

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "note: not root, cannot install: $$missing (the tests that need them will skip)"; exit 0; fi; \
	echo "installing Debian packages:" $$missing; \
	guard=0; if [ ! -e /usr/sbin/policy-rc.d ]; then \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; guard=1; fi; \
	( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing ) \
		> .apt.log 2>&1; rc=$$?; \
	if [ $$guard = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	if [ $$rc != 0 ]; then tail -20 .apt.log; echo "apt-get failed (full log: .apt.log)"; exit $$rc; fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "wgdisco needs Python >= 3.11 ($(PYTHON) is older)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		[ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
		$(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

test: bootstrap
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: bootstrap
	$(VENV)/bin/wgdisco demo

bench: bootstrap
	$(PY) bench/throughput.py $(BENCH_ARGS)
	$(PY) bench/rtt_floor.py

bench-smoke: bootstrap
	$(PY) bench/throughput.py --smoke
	$(PY) bench/rtt_floor.py --rounds 1 --count 20

FUZZ_RUNS ?= 1000000
FUZZ_TARGETS := wireguard stun probe record config uapi

# Coverage-guided fuzzing (atheris), FUZZ_RUNS executions per target; one JSON line each.
fuzz: venv
	$(PY) -m pip install -q -e '.[fuzz]'
	@for t in $(FUZZ_TARGETS); do $(PY) fuzz/run.py $$t $(FUZZ_RUNS) 2>/dev/null | tail -1 || exit 1; done

lab-clean: venv
	$(PY) -m wgdisco.lab.cleanup

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .apt.log *.egg-info
