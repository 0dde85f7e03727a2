"""Which PersistentVolume a claim binds to: Kubernetes' matching rules
(pkg/controller/volume/persistentvolume/index.go), pure functions shared by the
PV controller (binding) and the scheduler's volume-binding filter (which node
can reach a volume, which volume a delayed claim would get on a node).

A volume matches a claim when it has the claim's class, at least the requested
capacity, every access mode the claim asks for, the same volume mode, labels the
claim's selector matches, phase Available and no claimRef (or a claimRef naming
this claim: a volume pre-bound to it wins at once). Among the matches, the
volumes with the fewest access modes are looked at first and the smallest of
them wins. A claim of a WaitForFirstConsumer class is matched only for a node
(the scheduler's choice): volumes whose nodeAffinity excludes it are skipped.
"""

from __future__ import annotations

from apiserver.quantity import parse_quantity
from apiserver.selectors import LabelSelectorError, label_selector_from_proto
from controllers.scheduler.plugins import node_selector_term_matches

STORAGE = "storage"
IMMEDIATE, WAIT_FOR_FIRST_CONSUMER = "Immediate", "WaitForFirstConsumer"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
# annotations the PV controller and the scheduler write (upstream's names)
ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_DYNAMICALLY_PROVISIONED = "pv.kubernetes.io/provisioned-by"
NO_PROVISIONER = "kubernetes.io/no-provisioner"


def claim_class(claim) -> str:
    """The claim's class name ("" for none, and for unset: the default is filled in first)."""
    return claim.spec.storage_class_name if claim.spec.HasField("storage_class_name") else ""


def requested_bytes(claim) -> int:
    text = claim.spec.resources.requests.get(STORAGE, "0")
    try:
        return int(parse_quantity(text))
    except ValueError:
        return 0


def capacity_bytes(volume) -> int:
    try:
        return int(parse_quantity(volume.spec.capacity.get(STORAGE, "0")))
    except ValueError:
        return 0


def is_volume_bound_to_claim(volume, claim) -> bool:
    """The volume's claimRef names this claim (and its uid, when the ref has one)."""
    ref = volume.spec.claim_ref
    if not ref.name or ref.name != claim.metadata.name or ref.namespace != claim.metadata.namespace:
        return False
    return not ref.uid or ref.uid == claim.metadata.uid


def volume_node_affinity_matches(volume, node) -> bool:
    """The volume can be reached from ``node`` (no nodeAffinity: from every node)."""
    if not volume.spec.HasField("node_affinity") or not volume.spec.node_affinity.HasField("required"):
        return True
    terms = volume.spec.node_affinity.required.node_selector_terms
    return any(node_selector_term_matches(t, node) for t in terms)


def _selector_matches(claim, volume) -> bool:
    if not claim.spec.HasField("selector"):
        return True
    try:
        selector = label_selector_from_proto(claim.spec.selector)
    except LabelSelectorError:
        return False
    return selector.matches(volume.metadata.labels)


def _mode(text: str) -> str:
    return text or "Filesystem"


def find_best_match(claim, volumes, *, node=None, delay_binding: bool = False):
    """The volume ``claim`` should bind to, or None. ``node``: only volumes reachable from it
    (the scheduler asking for a delayed claim); ``delay_binding``: the claim's class waits for a
    consumer, so without a node only a volume pre-bound to the claim is returned."""
    wanted_modes = set(claim.spec.access_modes)
    wanted = requested_bytes(claim)
    cls = claim_class(claim)
    groups: dict[int, list] = {}
    for volume in volumes:
        modes = set(volume.spec.access_modes)
        if not wanted_modes <= modes:
            continue
        groups.setdefault(len(modes), []).append(volume)
    for size in sorted(groups):
        best, best_bytes = None, None
        for volume in groups[size]:
            if volume.metadata.deletion_timestamp:
                continue
            have = capacity_bytes(volume)
            if have < wanted or _mode(volume.spec.volume_mode) != _mode(claim.spec.volume_mode):
                continue
            if node is not None and not volume_node_affinity_matches(volume, node):
                continue
            if is_volume_bound_to_claim(volume, claim):
                return volume
            if node is None and delay_binding:
                continue  # the scheduler picks, for the node it chose
            if volume.spec.claim_ref.name or volume.status.phase != "Available":
                continue
            if volume.spec.storage_class_name != cls or not _selector_matches(claim, volume):
                continue
            if best is None or have < best_bytes:
                best, best_bytes = volume, have
        if best is not None:
            return best
    return None


def default_class(classes):
    """The default StorageClass (annotated is-default-class=true); the newest when several."""
    defaults = [c for c in classes if c.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION) == "true"]
    if not defaults:
        return None
    return max(defaults, key=lambda c: (c.metadata.creation_timestamp, c.metadata.name))


def is_delay_binding_mode(claim, classes_by_name) -> bool:
    """The claim's class binds only once a pod using the claim is scheduled."""
    cls = classes_by_name.get(claim_class(claim)) if claim_class(claim) else None
    return cls is not None and cls.volume_binding_mode == WAIT_FOR_FIRST_CONSUMER


def pod_claim_names(pod) -> list[str]:
    """The claims a pod's volumes name, in order, each once."""
    names: list[str] = []
    for v in pod.spec.volumes:
        if v.HasField("persistent_volume_claim") and v.persistent_volume_claim.claim_name not in names:
            names.append(v.persistent_volume_claim.claim_name)
    return names
