"""The layout of ``describe`` (and ``rollout history --revision``): labelled
lines whose values line up within a block, small tables, and the summary of
a pod template and its containers."""

from __future__ import annotations

from controllers.kctl import printers
from controllers.kctl.printers import NONE

TIME_FORMAT = "%a, %d %b %Y %H:%M:%S %z"


class Lines:
    """(indent, key, value) lines; ``value`` None is a heading or a raw line."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str, str | None]] = []

    def add(self, key: str, value="", indent: int = 0) -> None:
        self.items.append((indent, key, str(value)))

    def heading(self, text: str, indent: int = 0) -> None:
        self.items.append((indent, text, None))

    def raw(self, text: str, indent: int = 0) -> None:
        self.items.append((indent, text, None))

    def multi(self, key: str, values: list[str], indent: int = 0) -> None:
        """"Labels:  a=b" then further values under the first."""
        values = values or [NONE]
        self.add(key, values[0], indent)
        for v in values[1:]:
            self.add("", v, indent)

    def table(self, headers: list[str], rows: list[list[str]], indent: int = 2) -> None:
        rows = [headers, ["-" * len(h) for h in headers], *rows]
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(len(headers))]
        for r in rows:
            text = "".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1])) + r[-1]
            self.raw(text.rstrip(), indent)

    def render(self) -> str:
        out: list[str] = []
        i = 0
        while i < len(self.items):
            indent, key, value = self.items[i]
            if value is None:
                out.append(" " * indent + key)
                i += 1
                continue
            j = i
            while j < len(self.items) and self.items[j][2] is not None and self.items[j][0] == indent:
                j += 1
            width = max(len(k) + 1 for _, k, _ in self.items[i:j]) + 2
            for _, k, v in self.items[i:j]:
                label = f"{k}:" if k else ""
                out.append((" " * indent + label.ljust(width) + v).rstrip())
            i = j
        return "\n".join(out) + "\n"


def time_text(text: str) -> str:
    t = printers.parse_time(text)
    return t.strftime(TIME_FORMAT) if t else NONE


def map_lines(m) -> list[str]:
    return [f"{k}={m[k]}" for k in sorted(m)]


def annotation_lines(m) -> list[str]:
    return [f"{k}: {m[k]}" for k in sorted(m)]


def container(lines: Lines, c, status=None, indent: int = 2) -> None:
    lines.heading(f"{c.name}:", indent)
    inner = indent + 1
    lines.add("Image", c.image, inner)
    ports = [f"{p.container_port}/{p.protocol or 'TCP'}" for p in c.ports]
    lines.add("Port", ", ".join(ports) or NONE, inner)
    if c.command:
        lines.multi("Command", list(c.command), inner)
    if c.args:
        lines.multi("Args", list(c.args), inner)
    if status is not None:
        state = status.state
        if state.HasField("running"):
            lines.add("State", "Running", inner)
            lines.add("  Started", time_text(state.running.started_at), inner)
        elif state.HasField("terminated"):
            lines.add("State", "Terminated", inner)
            lines.add("  Reason", state.terminated.reason, inner)
            lines.add("  Exit Code", state.terminated.exit_code, inner)
        elif state.HasField("waiting"):
            lines.add("State", "Waiting", inner)
            lines.add("  Reason", state.waiting.reason, inner)
        lines.add("Ready", "True" if status.ready else "False", inner)
        lines.add("Restart Count", status.restart_count, inner)
    for title, m in (("Limits", c.resources.limits), ("Requests", c.resources.requests)):
        if m:
            lines.heading(f"{title}:", inner)
            for k in sorted(m):
                lines.add(k, m[k], inner + 2)
    env = [f"{e.name}: {e.value}" if not e.HasField("value_from") else f"{e.name}: <set from a reference>"
           for e in c.env]
    lines.multi("Environment", env or ["<none>"], inner)


def pod_template(lines: Lines, template) -> None:
    lines.heading("Pod Template:")
    lines.multi("Labels", map_lines(template.metadata.labels), 2)
    if template.metadata.annotations:
        lines.multi("Annotations", annotation_lines(template.metadata.annotations), 2)
    lines.heading("Containers:", 2)
    for c in template.spec.containers:
        container(lines, c, indent=3)
    if template.spec.node_selector:
        lines.multi("Node-Selectors", map_lines(template.spec.node_selector), 2)
