"""``wgdisco-userspace [-f|--foreground] IFACE``: wgdisco in the place of wireguard-go.

wg-quick(8), on a kernel without WireGuard, runs ``$WG_QUICK_USERSPACE_IMPLEMENTATION IFACE``
and expects what wireguard-go's ``main.go`` does: create the TUN interface and the UAPI socket
``/var/run/wireguard/IFACE.sock``, then return (the daemon stays behind), so that ``wg setconf``,
``ip`` and nft configure the rest. This program behaves the same way on the command line:

- ``IFACE`` or ``-f``/``--foreground IFACE``; anything else prints
  ``Usage: ARGV0 [-f/--foreground] INTERFACE-NAME`` on stdout and exits 0, as wireguard-go does;
  ``--version`` alone prints the version.
- It daemonizes unless ``-f``/``--foreground`` or ``WG_PROCESS_FOREGROUND=1``: the parent starts
  the daemon (a new session, stdin ``/dev/null``) and returns 0 only once the daemon reports that
  the interface and the UAPI socket exist, else prints why on stderr and exits 1. wireguard-go
  creates both in the parent and hands the fds down; here the daemon creates them and reports
  through a pipe (``WGDISCO_READY_FD``), which gives the parent the same guarantee.
- ``LOG_LEVEL``: ``verbose`` (wgdisco's info lines), ``debug``, ``error`` (the default: warnings and
  errors) or ``silent``. As with wireguard-go, a daemon keeps the caller's stdout/stderr only when
  ``LOG_LEVEL`` is set and not ``silent``; otherwise its output goes to ``/dev/null``.

There is no config file: the key, the listen port and the peers arrive over UAPI. Until a key
arrives the interface has none (``wg show IFACE private-key`` prints ``(none)``) and sends
nothing (daemon/tunnel.py). Discovery settings come from an optional side file
``/etc/wgdisco/IFACE.conf`` (``$WGDISCO_CONFIG_DIR`` instead of ``/etc/wgdisco``) holding only a
``[Discovery]`` section; without it, the defaults of a config without ``[Discovery]`` apply.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from wgdisco import __version__, config
from wgdisco.errors import ConfigError

EXIT_OK = 0
EXIT_SETUP_FAILED = 1  # wireguard-go's ExitSetupFailed
USAGE = "Usage: {prog} [-f/--foreground] INTERFACE-NAME"
FOREGROUND_ENV = "WG_PROCESS_FOREGROUND"  # as wireguard-go: "1" means do not daemonize
READY_FD_ENV = "WGDISCO_READY_FD"  # the daemon writes "ok" or why it failed here, then closes it
LOG_LEVELS = {"verbose": 20, "debug": 10, "error": 30, "silent": None}  # logging levels; None: nothing
DEFAULT_LOG_LEVEL = "error"  # wireguard-go's default


def parse_args(args: Sequence[str]) -> tuple[bool, str] | None:
    """``(foreground, interface)`` from ``argv[1:]`` as wireguard-go reads it; None: print the usage."""
    if len(args) not in (1, 2):
        return None
    if args[0] in ("-f", "--foreground"):
        return (True, args[1]) if len(args) == 2 else None
    return (False, args[0]) if len(args) == 1 else None


def log_level(value: str | None) -> int | None:
    """``LOG_LEVEL`` as a logging level (None: silent); unknown or unset values mean ``error``."""
    return LOG_LEVELS.get(value or "", LOG_LEVELS[DEFAULT_LOG_LEVEL])


def keeps_output(environ: Mapping[str, str]) -> bool:
    """Whether the daemon keeps the caller's stdout/stderr (wireguard-go: LOG_LEVEL set, not silent)."""
    return bool(environ.get("LOG_LEVEL")) and log_level(environ.get("LOG_LEVEL")) is not None


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None,
         environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    environ = os.environ if environ is None else environ
    prog, args = (argv[0] if argv else "wgdisco-userspace"), argv[1:]
    if args == ["--version"]:
        print(f"wgdisco-userspace {__version__}\n\nwgdisco's userspace WireGuard daemon, "
              "started the way wireguard-go is (wg-quick: WG_QUICK_USERSPACE_IMPLEMENTATION).", file=out)
        return EXIT_OK
    parsed = parse_args(args)
    if parsed is None:
        print(USAGE.format(prog=prog), file=out)
        return EXIT_OK  # as wireguard-go: the usage on stdout, and exit status 0
    foreground, name = parsed
    try:
        cfg = config.load_discovery(name, environ)
    except ConfigError as e:
        print(f"wgdisco-userspace: {e}", file=err)
        return EXIT_SETUP_FAILED
    if foreground or environ.get(FOREGROUND_ENV) == "1":
        return serve(cfg, err, environ)
    return daemonize(args, err, environ)


def daemonize(args: Sequence[str], err: TextIO, environ: Mapping[str, str]) -> int:
    """Start the daemon (this program again, in the foreground) and wait until it reports."""
    r, w = os.pipe2(os.O_CLOEXEC)
    env = {**environ, FOREGROUND_ENV: "1", READY_FD_ENV: str(w)}
    stdio = None if keeps_output(environ) else subprocess.DEVNULL
    try:
        # -P: never import a wgdisco that happens to sit in the working directory
        proc = subprocess.Popen([sys.executable, "-P", "-m", "wgdisco.userspace", *args], env=env, cwd="/",
                                stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio, pass_fds=(w,),
                                start_new_session=True)
    except OSError as e:
        os.close(r)
        print(f"wgdisco-userspace: cannot start the daemon: {e.strerror}", file=err)
        return EXIT_SETUP_FAILED
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read(4096).decode("utf-8", "replace").strip()  # until the daemon closes its end or dies
    if report == "ok":
        proc.returncode = 0  # not ours to wait for: the daemon runs on (and Popen must not warn)
        return EXIT_OK
    if not report:
        try:
            rc = proc.wait(timeout=5)
            report = f"the daemon exited with status {rc} before the interface was up"
        except subprocess.TimeoutExpired:
            report = "the daemon closed its report pipe without saying why"
    print(f"wgdisco-userspace: {report}", file=err)
    return EXIT_SETUP_FAILED


def serve(cfg: config.Config, err: TextIO, environ: Mapping[str, str]) -> int:
    """Run the interface in this process until SIGINT/SIGTERM or until the link is deleted."""
    import asyncio
    import logging

    from wgdisco import daemon
    from wgdisco.errors import LocalError

    from wgdisco.io import systemd

    level = log_level(environ.get("LOG_LEVEL"))
    systemd.configure_logging(logging.CRITICAL + 10 if level is None else level, err, environ)
    log = logging.getLogger("wgdisco")
    for warning in cfg.warnings:
        log.warning("%s", warning)
    ready: list[int] = []
    if environ.get(READY_FD_ENV, "").isdigit():
        fd = int(environ[READY_FD_ENV])
        try:
            os.set_inheritable(fd, False)  # hooks and helpers (nft) must not hold the parent waiting
            ready.append(fd)
        except OSError:
            pass
    os.environ.pop(READY_FD_ENV, None)

    def report(text: str) -> None:
        while ready:
            fd = ready.pop()
            try:
                os.write(fd, text.encode() + b"\n")
            except OSError:
                pass  # the parent is gone: nobody waits for the answer
            finally:
                os.close(fd)

    try:
        asyncio.run(daemon.Tunnel(cfg, over_uapi=True).run(on_ready=lambda: report("ok")))
    except (ConfigError, LocalError) as e:
        if ready:
            report(str(e))
        else:
            print(f"wgdisco-userspace: {e}", file=err)
        return EXIT_SETUP_FAILED
    except KeyboardInterrupt:
        report("interrupted")
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
