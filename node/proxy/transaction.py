"""One nftables transaction, written in the order the kernel needs: objects exist before rules
name them, flushed chains are refilled, elements leave before the chains they point at go, and
sets are deleted only after the rules that used them.

``full`` writes the whole table over what the kernel has (a restart, or after a failed sync);
``partial`` writes only what differs between two states of a few services (the usual sync).
"""

from __future__ import annotations

from collections import defaultdict

from .rules import BASE_CHAINS, FAMILY, MAPS, SETS, TABLE, Rules, is_service_name

T = f"{FAMILY} {TABLE}"


class Transaction:
    def __init__(self) -> None:
        self._objects: list[str] = []
        self._flushes: list[str] = []
        self._elem_del: dict[str, list[str]] = defaultdict(list)
        self._rules: list[str] = []
        self._elem_add: dict[str, list[str]] = defaultdict(list)
        self._deletes: list[str] = []
        self.rule_lines = 0
        self.element_lines = 0

    # ---- objects ----

    def table(self) -> None:
        self._objects.append(f'add table {T} {{ comment "rules for kube-proxy" ; }}')

    def chain(self, name: str, *, flush: bool = True) -> None:
        """Make sure ``name`` exists (a base chain gets its hook) and, with ``flush``, is empty
        before this transaction's rules for it."""
        if name in BASE_CHAINS:
            typ, hook, prio = BASE_CHAINS[name]
            self._objects.append(f"add chain {T} {name} {{ type {typ} hook {hook} "
                                 f"priority {prio} ; }}")
        else:
            self._objects.append(f"add chain {T} {name}")
        if flush:
            self._flushes.append(f"flush chain {T} {name}")

    def rules(self, chain: str, rules: tuple[str, ...]) -> None:
        self._rules.extend(f"add rule {T} {chain} {r}" for r in rules)
        self.rule_lines += len(rules)

    def container(self, name: str, definition: str, *, flush: bool) -> None:
        kind = "map" if name in MAPS else "set"
        self._objects.append(f"add {kind} {T} {name} {{ {definition} }}")
        if flush:
            self._flushes.append(f"flush {kind} {T} {name}")

    def add_element(self, container: str, key: str, value: str) -> None:
        self._elem_add[container].append(f"{key} : {value}" if value else key)
        self.element_lines += 1

    def delete_element(self, container: str, key: str) -> None:
        self._elem_del[container].append(key)

    def delete_set(self, name: str) -> None:
        self._deletes.append(f"delete set {T} {name}")

    def delete_chain(self, name: str) -> None:
        self._deletes.append(f"delete chain {T} {name}")

    def empty(self) -> bool:
        return not (self._objects or self._flushes or self._elem_del or self._rules
                    or self._elem_add or self._deletes)

    def script(self) -> str:
        lines = list(self._objects) + self._flushes
        for c, keys in self._elem_del.items():
            lines.append(f"delete element {T} {c} {{ {', '.join(keys)} }}")
        lines += self._rules
        for c, elems in self._elem_add.items():
            lines.append(f"add element {T} {c} {{ {', '.join(elems)} }}")
        lines += self._deletes
        return "\n".join(lines) + "\n"


def full(base: Rules, services: Rules, kernel_chains: set[str], kernel_sets: set[str]
         ) -> tuple[Transaction, set[str]]:
    """The whole table written over the kernel's: every chain flushed and refilled, every map
    and set refilled, our service chains the kernel has but ``services`` lacks flushed (returned:
    delete them in a later transaction, see ``Proxier``) and stale affinity sets deleted."""
    tx = Transaction()
    tx.table()
    for name, definition in {**MAPS, **SETS}.items():
        tx.container(name, definition, flush=True)
    for name, definition in services.sets.items():
        tx.container(name, definition, flush=False)  # keeps the clients it remembers
    for chains in (base.chains, services.chains):
        for name, rules in chains.items():
            tx.chain(name)
            tx.rules(name, rules)
    stale = {c for c in kernel_chains if is_service_name(c) and c not in services.chains}
    for name in sorted(stale):
        tx.chain(name)
    for name in sorted(kernel_sets):
        if is_service_name(name) and name not in services.sets:
            tx.delete_set(name)
    for elements in (base.elements, services.elements):
        for (container, key), value in elements.items():
            tx.add_element(container, key, value)
    return tx, stale


def partial(old: Rules, new: Rules, tx: Transaction | None = None) -> tuple[Transaction, set[str]]:
    """What turns ``old`` into ``new`` (the rules of the same services): changed chains
    rewritten, elements moved, sets added and removed. Returns the chains to delete later."""
    tx = tx or Transaction()
    for name, definition in new.sets.items():
        if name not in old.sets:
            tx.container(name, definition, flush=False)
    for name, rules in new.chains.items():
        if old.chains.get(name) != rules:
            tx.chain(name)
            tx.rules(name, rules)
    gone = {name for name in old.chains if name not in new.chains}
    for name in sorted(gone):
        tx.chain(name)  # emptied now, deleted once nothing can still be jumping to it
    for (container, key), value in old.elements.items():
        if new.elements.get((container, key)) != value:
            tx.delete_element(container, key)
    for (container, key), value in new.elements.items():
        if old.elements.get((container, key)) != value:
            tx.add_element(container, key, value)
    for name in old.sets:
        if name not in new.sets:
            tx.delete_set(name)
    return tx, gone

