"""An mDNS node for the lab: publish one ``_wireguard._udp`` instance and browse, with wgdisco.io.mdns.

    python mdns_node.py [--iface v1a ...] [--instance B32 --port 51820 --addr 10.1.0.2 --txt txtvers=1 ...]
                        [--update-txt S ...] [--ip-version all|v4|v6] [--no-browse]

Without ``--instance`` it only browses.  Prints one JSON object per line on
stdout, each with ``t`` (CLOCK_MONOTONIC, comparable across the lab's
processes: namespaces share the clock):

    {"event": "started"}                      sockets open, browsing
    {"event": "publishing"} / {"event": "published"}   around publish() (probe + announce)
    {"event": "sighting", "instance", "port", "addresses", "txt", "server"}
    {"event": "removed", "instance"}
    {"event": "updated"}                      after SIGUSR1 re-published with --update-txt
    {"event": "closed"}                       after SIGTERM: goodbyes sent, sockets closed

TXT strings are printed decoded as UTF-8 (``surrogateescape`` for other bytes).
``WGDISCO_MDNS_DEBUG=1`` logs zeroconf at DEBUG level on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from wgdisco.io.mdns import IPVersion, MdnsService, Removal, Seen

VERSIONS = {"all": IPVersion.All, "v4": IPVersion.V4Only, "v6": IPVersion.V6Only}


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def on_sighting(event: Seen | Removal) -> None:
    if isinstance(event, Removal):
        emit("removed", instance=event.instance)
        return
    emit(
        "sighting",
        instance=event.instance,
        port=event.port,
        addresses=list(event.addresses),
        txt=[s.decode("utf-8", "surrogateescape") for s in event.txt],
        server=event.server,
    )


def txt_bytes(strings: list[str]) -> list[bytes]:
    return [s.encode("utf-8", "surrogateescape") for s in strings]


async def main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    update = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, update.set)

    service = MdnsService(args.iface, ip_version=VERSIONS[args.ip_version])
    await service.start()
    if not args.no_browse:
        await service.browse(on_sighting)
    emit("started")
    if args.instance:
        emit("publishing", instance=args.instance)
        await service.publish(args.instance, args.port, args.addr, txt_bytes(args.txt))
        emit("published", instance=args.instance)

    async def updater() -> None:
        while True:
            await update.wait()
            update.clear()
            await service.update(args.instance, args.port, args.addr, txt_bytes(args.update_txt))
            emit("updated", instance=args.instance)

    task = loop.create_task(updater())
    await stop.wait()
    task.cancel()
    await service.close()
    emit("closed")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iface", action="append", help="interface name (repeatable; none: all interfaces)")
    p.add_argument("--instance", help="instance label to publish (base32 key)")
    p.add_argument("--port", type=int, default=51820)
    p.add_argument("--addr", action="append", default=[], help="address for A/AAAA (repeatable)")
    p.add_argument("--txt", action="append", default=[], help="TXT string, in order (repeatable)")
    p.add_argument("--update-txt", action="append", default=[], help="TXT strings published on SIGUSR1")
    p.add_argument("--ip-version", choices=sorted(VERSIONS), default="all")
    p.add_argument("--no-browse", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    if os.environ.get("WGDISCO_MDNS_DEBUG") == "1":
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
