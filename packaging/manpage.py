#!/usr/bin/env python3
"""Man pages for wgdisco(8) and wgdisco-userspace(8), generated from the programs' own help.

``python manpage.py OUTDIR`` (run by ``make install`` with the installed venv's python, so the
pages describe what was installed): wgdisco's from its argparse parser (every command with
its usage and options), wgdisco-userspace's from its module documentation. The date is
``$SOURCE_DATE_EPOCH`` when set (reproducible builds), else today.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from pathlib import Path

from wgdisco import __version__, cli, userspace

SEE_ALSO = r"\fBwg\fR(8), \fBwg-quick\fR(8), \fBwireguard-go\fR(8), \fBsystemd.service\fR(5), \fBsd_notify\fR(3)"


def esc(text: str) -> str:
    """Text safe in roff: backslashes, hyphens that are minus signs, lines starting with . or '."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.split("\n"))


def code(text: str) -> str:
    """``literal`` (reStructuredText) and `literal` (Markdown) as bold."""
    return re.sub(r"``(.+?)``|`(.+?)`", lambda m: f"\\fB{m.group(1) or m.group(2)}\\fR", text)


def header(name: str, summary: str) -> list[str]:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or datetime.datetime.now(datetime.timezone.utc).timestamp())
    date = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d")
    return [f'.TH {name.upper()} 8 "{date}" "wgdisco {__version__}" "System Manager\'s Manual"',
            ".SH NAME", f"{esc(name)} \\- {esc(summary)}"]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to list sub-parsers; this is how every man page generator does it
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):  # noqa: SLF001
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else f" \\fI{esc(str(action.metavar or action.dest.upper()))}\\fR"
            term = ", ".join(f"\\fB{esc(o)}\\fR" for o in action.option_strings) + metavar
        else:
            term = f"\\fI{esc(str(action.metavar or action.dest))}\\fR"
        out += [".TP", term, code(esc(action.help or ""))]
    return out


def wgdisco_page() -> str:
    parser = cli.build_parser()
    lines = header("wgdisco", parser.description or "")
    lines += [".SH SYNOPSIS", "\\fBwgdisco\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR]", ".br",
              "\\fBwgdisco \\-\\-version\\fR",
              ".SH DESCRIPTION", code(esc(cli.__doc__.split("\n\n", 1)[1].strip()))]
    lines += [".SH COMMANDS"]
    for name, sub in subcommands(parser).items():
        usage = " ".join(sub.format_usage().split()[1:])  # "usage: wgdisco up [-h] config"
        lines += [".SS " + esc(name), ".B " + esc(usage), ".PP", code(esc(sub.description or ""))]
        lines += options(sub)
    lines += [".SH OPTIONS", ".TP", "\\fB\\-\\-version\\fR",
              "the version, the data path in use (compiled or pure Python, and the crypto library) "
              "and the Python version"]
    lines += [".SH FILES", ".TP", "/etc/wireguard/\\fIIFACE\\fR.conf",
              "the configuration of interface \\fIIFACE\\fR (wg-quick's format, plus [Discovery])",
              ".TP", "/var/run/wireguard/\\fIIFACE\\fR.sock", "the UAPI socket (\\fBwg show\\fR, \\fBwg set\\fR)",
              ".TP", "/run/wgdisco/\\fIIFACE\\fR.sock", "the control socket (\\fBwgdisco status\\fR)",
              ".TP", "/var/lib/wgdisco/\\fIIFACE\\fR.key", "a mesh member's generated identity"]
    lines += [".SH ENVIRONMENT", ".TP", ".B NOTIFY_SOCKET",
              "set by systemd for Type=notify: READY=1, RELOADING=1, STOPPING=1 are sent there",
              ".TP", ".B JOURNAL_STREAM", "set by systemd: log lines carry a priority and no time of their own",
              ".TP", ".B WGDISCO_DATAPATH", "auto (default), c or python: which data path runs"]
    lines += [".SH SEE ALSO", "\\fBwgdisco\\-userspace\\fR(8), " + SEE_ALSO,
              ".PP", "The documentation in /usr/local/share/doc/wgdisco (docs/ in the source)."]
    return "\n".join(lines) + "\n"


def userspace_page() -> str:
    doc = userspace.__doc__ or ""
    first, _, rest = doc.strip().partition("\n\n")
    lines = header("wgdisco-userspace", "wgdisco's userspace WireGuard tunnel, started the way wireguard-go is")
    lines += [".SH SYNOPSIS", "\\fBwgdisco\\-userspace\\fR [\\fB\\-f\\fR|\\fB\\-\\-foreground\\fR] \\fIINTERFACE\\-NAME\\fR",
              ".br", "\\fBwgdisco\\-userspace \\-\\-version\\fR", ".SH DESCRIPTION"]
    for para in rest.strip().split("\n\n"):
        if para.lstrip().startswith("- "):
            for item in re.split(r"\n(?=- )", para.strip()):
                lines += [".IP \\(bu 2", code(esc(" ".join(item[2:].split())))]
        else:
            lines += [".PP", code(esc(" ".join(para.split())))]
    lines += [".SH SEE ALSO", "\\fBwgdisco\\fR(8), " + SEE_ALSO]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: manpage.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "wgdisco.8").write_text(wgdisco_page())
    (out / "wgdisco-userspace.8").write_text(userspace_page())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
