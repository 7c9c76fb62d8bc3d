# wgdisco — two commands on a fresh Debian 12 machine:
#   make demo   build a lab of network namespaces and show discovery + NAT traversal
#   make test   the whole test suite (as root, the network-namespace tests run too)
# Both bootstrap the machine themselves: Debian packages (when root) and a .venv.
# While working on the code: make test-fast (tests/unit only: no root, no namespaces, < 1 min).
# On a machine: sudo make install (PREFIX=/usr/local, DESTDIR honoured; docs/install.md), then
#   systemctl enable --now wgdisco@wg0; sudo make uninstall removes exactly what was installed.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR ?=

# The real parts the tests and the demo run: wireguard-go + wg for interop, STUN
# servers, Knot and BIND (the rendezvous recipes) for RFC 2136, Avahi for mDNS interop, nftables NAT routers, iperf3,
# miniupnpd (UPnP IGD, NAT-PMP, PCP on a lab router) with the upnpc and natpmpc clients;
# gcc, the Python headers and libssl-dev build the compiled data path (wgdisco/io/_fastpath.c).
APT_PACKAGES := iproute2 iputils-ping nftables procps psmisc wireguard-go wireguard-tools \
	iperf3 stun-server coturn knot knot-dnsutils avahi-daemon avahi-utils dbus \
	bind9 bind9-dnsutils netcat-openbsd miniupnpd-nftables miniupnpc natpmpc \
	gcc libc6-dev python3-dev libssl-dev

.PHONY: all test test-fast test-asan demo bench bench-smoke fuzz bootstrap system-deps venv clean lab-clean \
	install uninstall

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

$(VENV)/.installed: pyproject.toml setup.py wgdisco/io/_fastpath.c
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "wgdisco needs Python >= 3.11 ($(PYTHON) is older)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		[ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
		$(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

test: bootstrap
	$(PY) tests/run_suite.py $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The compiled data path under AddressSanitizer + UBSan: a separate build (build/asan), loaded in
# place of the installed one (WGDISCO_FASTPATH_SO), through its differential tests and a short
# fuzz run of its parse entry points (fuzz/targets.py fastpath_udp, fastpath_tun).
ASAN_SO = build/asan/wgdisco/io/_fastpath$(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
ASAN_ENV = WGDISCO_FASTPATH_SO=$(CURDIR)/$(ASAN_SO) PYTHONMALLOC=malloc \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so)
ASAN_FUZZ_RUNS ?= 20000

test-asan: venv
	rm -rf build/asan build/asan-tmp
	WGDISCO_SANITIZE=1 WGDISCO_BUILD_FASTPATH=1 $(PY) setup.py -q build_ext -b build/asan -t build/asan-tmp
	$(ASAN_ENV) $(PY) -m pytest -p no:cacheprovider tests/unit/test_fastpath.py $(PYTEST_ARGS)
	$(PY) -m pip install -q -e '.[fuzz]'
	@for t in fastpath_udp fastpath_tun; do $(ASAN_ENV) $(PY) fuzz/run.py $$t $(ASAN_FUZZ_RUNS) 2>/dev/null | tail -1 || exit 1; done

demo: bootstrap
	$(VENV)/bin/wgdisco demo

bench: bootstrap
	$(PY) bench/throughput.py $(BENCH_ARGS)
	$(PY) bench/rtt_floor.py
	$(PY) bench/ping_added.py

bench-smoke: bootstrap
	$(PY) bench/throughput.py --smoke
	$(PY) bench/rtt_floor.py --rounds 1 --count 20

FUZZ_RUNS ?= 1000000
FUZZ_TARGETS := wireguard stun probe record config uapi fastpath_udp fastpath_tun

# Coverage-guided fuzzing (atheris), FUZZ_RUNS executions per target; one JSON line each.
fuzz: venv
	$(PY) -m pip install -q -e '.[fuzz]'
	@for t in $(FUZZ_TARGETS); do $(PY) fuzz/run.py $$t $(FUZZ_RUNS) 2>/dev/null | tail -1 || exit 1; done

# A venv of its own under $(PREFIX)/lib/wgdisco, launchers in $(PREFIX)/bin, the systemd unit,
# man pages, docs and a manifest (packaging/install.py). Root, unless staged with DESTDIR.
install:
	@$(PYTHON) packaging/install.py install --prefix "$(PREFIX)" --destdir "$(DESTDIR)" --sysconfdir "$(SYSCONFDIR)"

uninstall:
	@$(PYTHON) packaging/install.py uninstall --prefix "$(PREFIX)" --destdir "$(DESTDIR)" --sysconfdir "$(SYSCONFDIR)"

lab-clean: venv
	$(PY) -m wgdisco.lab.cleanup

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .apt.log *.egg-info
