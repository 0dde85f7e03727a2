"""``logs`` and ``exec``: a pod's container output and commands, through the apiserver, which
proxies them to the node's kubelet (as kubectl's do).

``exec`` is non-interactive: no stdin, no terminal (-i/-t are refused), and the command's
output is printed when it ends. kctl exits with the command's exit code, saying
"command terminated with exit code N" on stderr as kubectl does.
"""

from __future__ import annotations

from controllers.kctl.rollout import parse_duration
from controllers.kctl.session import CommandError, Session


def pod_name(arg: str) -> str:
    """POD, pod/POD or pods/POD (kctl reads no other kinds' pods here)."""
    kind, sep, name = arg.partition("/")
    if not sep:
        return arg
    if kind.lower() not in ("pod", "pods", "po") or not name:
        raise CommandError(f'cannot read logs of "{arg}": only pods are supported (POD or pod/POD)')
    return name


def _write(stream, data: bytes) -> None:
    out = getattr(stream, "buffer", None)
    if out is not None:
        out.write(data)
    else:
        stream.write(data.decode(errors="replace"))
    stream.flush()


def cmd_logs(session: Session, args) -> int:
    name = pod_name(args.pod)
    since_seconds = None
    if args.since:
        seconds = parse_duration(args.since)
        if seconds > 0:
            since_seconds = max(1, round(seconds))
    if since_seconds is not None and args.since_time:
        raise CommandError("at most one of `sinceTime` or `sinceSeconds` may be specified")
    stream = session.client.logs(
        name, session.namespace, container=args.container or "", follow=args.follow,
        previous=args.previous, tail_lines=args.tail if args.tail != -1 else None,
        limit_bytes=args.limit_bytes if args.limit_bytes != 0 else None,
        since_seconds=since_seconds, since_time=args.since_time, timestamps=args.timestamps)
    try:
        for chunk in stream:
            _write(session.out, chunk)
    finally:
        stream.stop()
    return 0


def cmd_exec(session: Session, args) -> int:
    if args.stdin or args.tty:
        raise CommandError("-i/--stdin and -t/--tty are not supported yet: kctl exec runs a command "
                           "without input or a terminal (CRI ExecSync)")
    if args.legacy_command:
        raise CommandError("exec [POD] [COMMAND] is not supported anymore. "
                           "Use exec [POD] -- [COMMAND] instead")
    if not args.exec_command:
        raise CommandError("you must specify at least one command for the container")
    name = pod_name(args.pod)
    pod = session.client.get("pods", name, session.namespace)
    if pod.status.phase in ("Succeeded", "Failed"):
        raise CommandError(f"cannot exec into a container in a completed pod; current phase is {pod.status.phase}")
    resp = session.client.exec(name, args.exec_command, session.namespace, container=args.container or "")
    if resp.stdout:
        _write(session.out, resp.stdout)
    if resp.stderr:
        _write(session.err, resp.stderr)
    if resp.exit_code != 0:
        session.warn(f"command terminated with exit code {resp.exit_code}")
    return exit_code(resp.exit_code)


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``kctl ... exec POD [flags] -- CMD ARGS``: (kctl's own words, the command) — the command
    is everything after the first ``--`` of an exec, flags of its own included."""
    if "exec" in argv and "--" in argv and argv.index("exec") < argv.index("--"):
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def exit_code(code: int) -> int:
    """A command's exit code as a process exit status (0..255)."""
    return code & 0xFF if code >= 0 else 1

