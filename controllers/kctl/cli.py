"""kctl's command line: flags, subcommands, exit codes.

Global flags (--server, -n, -A, --request-timeout) may stand before or after
the subcommand, as kubectl's do. Exit code 0 on success, 1 on any failure
(a usage error included), printed on stderr in kubectl's words.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from apiserver import resources
from apiserver.errors import ApiError
from controllers.kctl.session import (
    DEFAULT_SERVER,
    SERVER_ENV,
    CommandError,
    Session,
    Unreachable,
    report,
)

DISTRIBUTION = "etcdlite-plane"

APPLY_HELP = """Create or update objects from manifests (YAML or JSON, several documents
per file, a directory of them, or - for standard input).

This is a client-side apply, not server-side apply: the manifest is recorded
on the object (annotation kubectl.kubernetes.io/last-applied-configuration);
an existing object is updated with what the manifest says, keeping fields the
server or controllers filled in, and dropping fields the previous manifest
had and this one has not. Prints "<kind>/<name> created|configured|unchanged"."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # kubectl exits 1 on usage errors too
        self.print_usage(sys.stderr)
        self.exit(1, f"error: {message}\n")


def _global_flags(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    def d(value):
        return value if defaults else argparse.SUPPRESS
    p.add_argument("--server", "-s", default=d(None),
                   help=f"the apiserver, host:port (default: ${SERVER_ENV} or {DEFAULT_SERVER}, "
                        f"the plane `make run` starts)")
    p.add_argument("-n", "--namespace", default=d(None), help='the namespace (default "default")')
    p.add_argument("-A", "--all-namespaces", action="store_true", default=d(False),
                   help="list across every namespace")
    p.add_argument("--request-timeout", type=float, default=d(30.0), metavar="SECONDS",
                   help="give up on one API call after this long (default 30)")


def _files_flag(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("-f", "--filename", action="append", default=[], required=required,
                   help="a manifest file, a directory of them, or - for stdin (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, defaults=False)
    parser = _Parser(prog="kctl", description="kctl controls the control plane, as kubectl does.")
    _global_flags(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text,
                              description=description or help_text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("apply", "create or update objects from manifests (client-side apply)", APPLY_HELP)
    _files_flag(p, required=True)

    p = command("create", "create objects from manifests (an existing one is an error)")
    _files_flag(p, required=True)

    p = command("delete", "delete objects by KIND NAME..., KIND/NAME, -f, -l or --all")
    p.add_argument("args", nargs="*", metavar="KIND NAME")
    _files_flag(p, required=False)
    p.add_argument("-l", "--selector", default="", help="delete the objects this label selector matches")
    p.add_argument("--all", action="store_true", help="delete every object of KIND in the namespace")
    p.add_argument("--cascade", default="background",
                   help="background (default), foreground or orphan: what happens to dependents")
    p.add_argument("--grace-period", type=int, default=-1,
                   help="seconds a pod gets to stop (-1: the pod's own; 0 needs --force)")
    p.add_argument("--now", action="store_true", help="--grace-period=1")
    p.add_argument("--force", action="store_true", help="with --grace-period=0: delete at once")
    p.add_argument("--ignore-not-found", action="store_true", help="a missing object is no error")

    p = command("get", "list objects as a table, or print them as YAML, JSON or names")
    p.add_argument("args", nargs="*", metavar="KIND [NAME...]")
    p.add_argument("-o", "--output", help="yaml, json, name or wide")
    p.add_argument("-l", "--selector", default="", help="label selector (app=web,tier!=db)")
    p.add_argument("--field-selector", default="", help="field selector (status.phase=Running)")
    p.add_argument("-w", "--watch", action="store_true", help="after listing, print each change")
    p.add_argument("--watch-only", action="store_true", help="print changes only, no listing first")
    p.add_argument("--output-watch-events", action="store_true",
                   help="with --watch: an EVENT column (ADDED, MODIFIED, DELETED)")
    p.add_argument("--show-labels", action="store_true", help="a LABELS column")
    p.add_argument("--no-headers", action="store_true", help="no header row")

    p = command("describe", "a readable summary of objects, with their events")
    p.add_argument("args", nargs="+", metavar="KIND NAME")

    p = command("scale", "set the replicas of deployments or replicasets")
    p.add_argument("args", nargs="+", metavar="KIND/NAME")
    p.add_argument("--replicas", type=int, required=True)
    p.add_argument("--current-replicas", type=int, default=None,
                   help="only if the object has this many replicas now")

    p = command("rollout", "status, history, undo, pause or resume a deployment's rollout")
    rsub = p.add_subparsers(dest="rollout_action", metavar="ACTION", parser_class=_Parser)
    rsub.required = True
    r = rsub.add_parser("status", parents=[common], help="wait until the rollout is complete")
    r.add_argument("target", nargs="+", metavar="deployment/NAME")
    r.add_argument("--timeout", default="0s", help="give up after this long (e.g. 5m; 0: never)")
    r.add_argument("-w", "--watch", default=True, type=lambda v: v.lower() not in ("false", "0", "no"),
                   help="keep watching until done (default true; --watch=false prints once)")
    r = rsub.add_parser("history", parents=[common], help="the revisions (from the ReplicaSets)")
    r.add_argument("target", nargs="+", metavar="deployment/NAME")
    r.add_argument("--revision", type=int, default=0, help="show this revision's pod template")
    r = rsub.add_parser("undo", parents=[common], help="roll back to the previous or a given revision")
    r.add_argument("target", nargs="+", metavar="deployment/NAME")
    r.add_argument("--to-revision", type=int, default=0, help="the revision (default: the previous one)")
    for action, text in (("pause", "stop rolling out template changes"),
                         ("resume", "roll out again after a pause")):
        r = rsub.add_parser(action, parents=[common], help=text)
        r.add_argument("target", nargs="+", metavar="deployment/NAME")

    for name, text in (("cordon", "mark nodes unschedulable"), ("uncordon", "mark nodes schedulable")):
        p = command(name, text)
        p.add_argument("nodes", nargs="+", metavar="NODE")

    p = command("set", "change a field of objects")
    ssub = p.add_subparsers(dest="set_action", metavar="WHAT", parser_class=_Parser)
    ssub.required = True
    s = ssub.add_parser("image", parents=[common], help="set container images: KIND/NAME CONTAINER=IMAGE...")
    s.add_argument("args", nargs="+", metavar="KIND/NAME CONTAINER=IMAGE")

    p = command("logs", "print a container's logs (from its node's kubelet, through the apiserver)")
    p.add_argument("pod", metavar="POD", help="the pod (POD or pod/POD)")
    p.add_argument("-c", "--container", default="",
                   help="the container (default: the only one, or the pod's default-container annotation)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what the container writes, until it exits")
    p.add_argument("-p", "--previous", action="store_true",
                   help="the logs of the container's previous instance (before its last restart)")
    p.add_argument("--tail", type=int, default=-1, help="the last N lines (-1: every line)")
    p.add_argument("--timestamps", action="store_true", help="each line prefixed by its time (RFC 3339)")
    p.add_argument("--since", default="", help="only lines newer than this duration (5s, 2m, 3h)")
    p.add_argument("--since-time", default="", help="only lines from this RFC 3339 time on")
    p.add_argument("--limit-bytes", type=int, default=0, help="stop after this many bytes (0: no limit)")

    p = command("exec", "run a command in a container: kctl exec POD [-c C] -- CMD [ARGS...]",
                "Run a command in a running container, through the apiserver and the node's kubelet.\n"
                "Non-interactive: the command gets no input and no terminal (-i/-t are not supported\n"
                "yet), and its output is printed when it ends. kctl exits with its exit code.")
    p.usage = "kctl exec POD [-c CONTAINER] [flags] -- COMMAND [ARGS...]"
    p.add_argument("pod", metavar="POD", help="the pod (POD or pod/POD)")
    p.add_argument("legacy_command", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("-c", "--container", default="",
                   help="the container (default: the only one, or the pod's default-container annotation)")
    p.add_argument("-i", "--stdin", action="store_true", help="not supported yet")
    p.add_argument("-t", "--tty", action="store_true", help="not supported yet")

    p = command("version", "the client's version, and whether the server answers")
    p.add_argument("--client", action="store_true", help="the client's only")

    command("api-resources", "the kinds the apiserver serves")
    return parser


def _client_version() -> str:
    from importlib import metadata  # slow to import; only `version` needs it
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def cmd_version(session: Session, args) -> int:
    session.print(f"Client Version: kctl {_client_version()}")
    if args.client:
        return 0
    session.client.list("namespaces", limit=1)
    session.print(f"Server: the apiserver at {session.server} answers")
    return 0


def cmd_api_resources(session: Session, args) -> int:
    rows = [["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]]
    for r in sorted(resources.RESOURCES, key=lambda r: r.name):
        rows.append([r.name, ",".join(r.short_names), r.api_version, str(r.namespaced).lower(), r.kind])
    widths = [max(len(row[i]) for row in rows) + 3 for i in range(4)]
    for row in rows:
        session.print("".join(c.ljust(widths[i]) for i, c in enumerate(row[:4])) + row[4])
    return 0


# command -> (module, function): a command imports only what it runs, so
# that each kctl invocation starts quickly
COMMANDS = {
    "apply": ("apply", "cmd_apply"),
    "create": ("apply", "cmd_create"),
    "delete": ("edits", "cmd_delete"),
    "get": ("get", "cmd_get"),
    "describe": ("describe", "cmd_describe"),
    "scale": ("edits", "cmd_scale"),
    "rollout": ("rollout", "cmd_rollout"),
    "cordon": ("edits", "cmd_cordon"),
    "uncordon": ("edits", "cmd_uncordon"),
    "set": ("edits", "cmd_set_image"),
    "logs": ("podio", "cmd_logs"),
    "exec": ("podio", "cmd_exec"),
}
LOCAL_COMMANDS = {"version": cmd_version, "api-resources": cmd_api_resources}


def _command(name: str):
    if name in LOCAL_COMMANDS:
        return LOCAL_COMMANDS[name]
    module, function = COMMANDS[name]
    return getattr(importlib.import_module(f"controllers.kctl.{module}"), function)


def main(argv: list[str] | None = None) -> int:
    """Runs one kctl command; the exit code."""
    from controllers.kctl.podio import split_command

    words, exec_command = split_command(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(words)
    args.exec_command = exec_command or []
    server = args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    session = Session(server=server, namespace=args.namespace or "default",
                      namespace_given=args.namespace is not None,
                      all_namespaces=args.all_namespaces, request_timeout=args.request_timeout)
    try:
        return _command(args.command)(session, args)
    except (CommandError, ApiError, Unreachable) as e:
        report(session, e)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kctl get pods | head`
        sys.stderr.close()
        return 0
    finally:
        session.close()
