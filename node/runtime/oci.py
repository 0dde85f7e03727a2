"""The OCI runtime spec (a bundle's config.json, runtime-spec 1.0.2) of one CRI container.

The kubelet describes a container in CRI terms (PodSandboxConfig + ContainerConfig) and the image
adds its defaults (Entrypoint, Cmd, Env, WorkingDir, User, StopSignal); runc wants one OCI
document. The translation follows what containerd's CRI plugin does, so that a pod behaves the
same on this runtime and on containerd: the same process arguments, environment, capabilities,
default mounts, masked paths and limits. Pure: no processes, no writes outside the function's
return value (user names are looked up in the rootfs' /etc/passwd and /etc/group, read only).
"""

from __future__ import annotations

import os
import signal as _signal
from dataclasses import dataclass, field

OCI_VERSION = "1.0.2"

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# containerd's default capability set for a non-privileged container (docker's too)
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

# capability names by number (linux/capability.h: CAP_CHOWN = 0 ... CAP_CHECKPOINT_RESTORE = 40)
CAPABILITY_NAMES = tuple("CAP_" + n for n in (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO "
    "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME "
    "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
    "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE").split())


def bounding_capabilities() -> tuple[str, ...]:
    """The capabilities this process may hand on (its bounding set): what "all" means for a
    privileged container, as containerd's WithAllCurrentCapabilities (here CAP_SYS_RESOURCE, for
    one, is not ours to give)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
                    return tuple(n for i, n in enumerate(CAPABILITY_NAMES) if mask >> i & 1)
    except (OSError, ValueError):
        pass
    return CAPABILITY_NAMES


ALL_CAPABILITIES = bounding_capabilities()

DEFAULT_MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# CRI MountPropagation -> the rootfs-relative bind option runc understands
PROPAGATION = {0: "rprivate", 1: "rslave", 2: "rshared"}

# CRI Signal enum (runtime.v1) -> signal name; 0 = the runtime's default (the image's, else SIGTERM)
CRI_SIGNALS = (
    "", "SIGABRT", "SIGALRM", "SIGBUS", "SIGCHLD", "SIGCLD", "SIGCONT", "SIGFPE", "SIGHUP",
    "SIGILL", "SIGINT", "SIGIO", "SIGIOT", "SIGKILL", "SIGPIPE", "SIGPOLL", "SIGPROF", "SIGPWR",
    "SIGQUIT", "SIGSEGV", "SIGSTKFLT", "SIGSTOP", "SIGSYS", "SIGTERM", "SIGTRAP", "SIGTSTP",
    "SIGTTIN", "SIGTTOU", "SIGURG", "SIGUSR1", "SIGUSR2", "SIGVTALRM", "SIGWINCH", "SIGXCPU",
    "SIGXFSZ", "SIGRTMIN", "SIGRTMIN+1", "SIGRTMIN+2", "SIGRTMIN+3", "SIGRTMIN+4", "SIGRTMIN+5",
    "SIGRTMIN+6", "SIGRTMIN+7", "SIGRTMIN+8", "SIGRTMIN+9", "SIGRTMIN+10", "SIGRTMIN+11",
    "SIGRTMIN+12", "SIGRTMIN+13", "SIGRTMIN+14", "SIGRTMIN+15", "SIGRTMAX-14", "SIGRTMAX-13",
    "SIGRTMAX-12", "SIGRTMAX-11", "SIGRTMAX-10", "SIGRTMAX-9", "SIGRTMAX-8", "SIGRTMAX-7",
    "SIGRTMAX-6", "SIGRTMAX-5", "SIGRTMAX-4", "SIGRTMAX-3", "SIGRTMAX-2", "SIGRTMAX-1", "SIGRTMAX",
)


class SpecError(ValueError):
    """The CRI config cannot become a runnable OCI spec (no command, unknown user, bad signal);
    the message is meant for the pod's status (the kubelet reports CreateContainerError)."""


@dataclass
class SandboxFiles:
    """What the sandbox gives each of its containers: its namespaces (network; IPC and UTS when
    the sandbox keeps them, so that a pod's containers share them as Kubernetes promises), its
    /dev/shm, and the files that name the pod to itself."""
    netns_path: str
    hostname: str
    hosts: str | None = None        # host paths of the sandbox's /etc/hosts, resolv.conf, hostname
    resolv_conf: str | None = None
    hostname_file: str | None = None
    ipc_ns_path: str | None = None
    uts_ns_path: str | None = None
    shm: str | None = None          # a tmpfs the pod's containers share as /dev/shm


@dataclass
class ContainerPaths:
    """Where this runtime put the container: its root filesystem and its cgroup (runc's
    cgroupsPath, ``/<node prefix>/<sandbox id>/<container id>``), and the runtime's own
    per-container pids limit (0: none)."""
    rootfs: str
    cgroups_path: str
    annotations: dict = field(default_factory=dict)
    pids_limit: int = 0


def process_args(command, args, image_config: dict) -> list[str]:
    """The container's argv as Kubernetes defines it: a command replaces the image's Entrypoint
    and drops its Cmd; args replace the Cmd only."""
    command, args = list(command), list(args)
    if not command:
        command = list(image_config.get("Entrypoint") or [])
        if not args:
            args = list(image_config.get("Cmd") or [])
    argv = command + args
    if not argv:
        raise SpecError("no command specified: the container has no command or args and its "
                        "image has no Entrypoint or Cmd")
    return argv


def merge_env(image_env, envs) -> list[str]:
    """The image's environment, then the container's (KeyValue list, values bytes in CRI v1):
    a container variable replaces the image's of the same name, in place; PATH defaults as in
    containerd."""
    order: list[str] = []
    values: dict[str, str] = {}
    for item in image_env or ():
        key, _, value = item.partition("=")
        if key not in values:
            order.append(key)
        values[key] = value
    if "PATH" not in values:
        order.insert(0, "PATH")
        values["PATH"] = DEFAULT_PATH.partition("=")[2]
    for kv in envs:
        value = kv.value.decode("utf-8", "replace") if isinstance(kv.value, bytes) else kv.value
        if kv.key not in values:
            order.append(kv.key)
        values[kv.key] = value
    return [f"{k}={values[k]}" for k in order]


def _read_db(rootfs: str, name: str) -> list[list[str]]:
    try:
        with open(os.path.join(rootfs, "etc", name), encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def _lookup_user(rootfs: str, user: str) -> tuple[int, int | None]:
    """(uid, primary gid or None) of a user name or number, from the rootfs' /etc/passwd."""
    for entry in _read_db(rootfs, "passwd"):
        if len(entry) >= 4 and (entry[0] == user or entry[2] == user):
            try:
                return int(entry[2]), int(entry[3])
            except ValueError:
                break
    if user.isdigit():
        return int(user), None
    raise SpecError(f"unable to find user {user}: no matching entries in passwd file")


def _lookup_group(rootfs: str, group: str) -> int:
    if group.isdigit():
        return int(group)
    for entry in _read_db(rootfs, "group"):
        if len(entry) >= 3 and entry[0] == group:
            return int(entry[2])
    raise SpecError(f"unable to find group {group}: no matching entries in group file")


def _groups_of(rootfs: str, user: str | None, uid: int) -> list[int]:
    """Supplementary groups listing the user in the rootfs' /etc/group (as runc's default)."""
    names = {str(uid)} | ({user} if user else set())
    for entry in _read_db(rootfs, "passwd"):
        if len(entry) >= 3 and entry[2] == str(uid):
            names.add(entry[0])
    gids = []
    for entry in _read_db(rootfs, "group"):
        if len(entry) >= 4 and names & set(entry[3].split(",")):
            try:
                gids.append(int(entry[2]))
            except ValueError:
                pass
    return gids


def process_user(security_context, image_config: dict, rootfs: str) -> dict:
    """uid/gid/additionalGids: the CRI security context's run_as_user/run_as_username/
    run_as_group win over the image's User ("user", "uid", "user:group", "uid:gid")."""
    user_name: str | None = None
    uid, gid = 0, None
    image_user = image_config.get("User") or ""
    sc = security_context
    if sc is not None and sc.HasField("run_as_user"):
        uid, gid = _lookup_user(rootfs, str(sc.run_as_user.value))
    elif sc is not None and sc.run_as_username:
        user_name = sc.run_as_username
        uid, gid = _lookup_user(rootfs, user_name)
    elif image_user:
        name, _, group = image_user.partition(":")
        user_name = None if name.isdigit() else name
        uid, gid = _lookup_user(rootfs, name)
        if group:
            gid = _lookup_group(rootfs, group)
    if sc is not None and sc.HasField("run_as_group"):
        gid = sc.run_as_group.value
    gids = _groups_of(rootfs, user_name, uid)
    if sc is not None:
        gids += [g for g in sc.supplemental_groups if g not in gids]
    user = {"uid": uid, "gid": 0 if gid is None else gid}
    gids = [g for g in gids if g != user["gid"]]
    if gids:
        user["additionalGids"] = gids
    return user


def capabilities(security_context) -> dict:
    """containerd's default set, with the CRI context's adds and drops ("ALL" allowed on both
    sides, names with or without the CAP_ prefix); a privileged container gets all."""
    sc = security_context
    if sc is not None and sc.privileged:
        caps = list(ALL_CAPABILITIES)
    else:
        caps = list(DEFAULT_CAPABILITIES)
        if sc is not None and sc.HasField("capabilities"):
            def norm(c: str) -> str:
                c = c.upper()
                return c if c == "ALL" or c.startswith("CAP_") else "CAP_" + c
            add = [norm(c) for c in sc.capabilities.add_capabilities]
            drop = [norm(c) for c in sc.capabilities.drop_capabilities]
            if "ALL" in add:
                caps = list(ALL_CAPABILITIES)
            else:
                caps += [c for c in add if c not in caps]
            if "ALL" in drop:
                caps = [c for c in add if c != "ALL"]
            else:
                caps = [c for c in caps if c not in drop]
    return {"bounding": caps, "effective": caps, "permitted": caps}


def resources(res, pids_limit: int = 0) -> dict:
    """linux.resources from CRI LinuxContainerResources (zero = unset); the device cgroup denies
    all, runc then allows its default devices (null, zero, full, tty, random, urandom, ptmx).
    CRI has no pids field: the limit is the runtime's own (CRI-O's pids_limit), or the
    ``pids.max`` of the resources' unified map."""
    out: dict = {"devices": [{"allow": False, "access": "rwm"}]}
    unified_pids = res.unified.get("pids.max", "") if res is not None else ""
    if unified_pids.isdigit() and int(unified_pids) > 0:
        pids_limit = int(unified_pids)
    if pids_limit > 0:
        out["pids"] = {"limit": pids_limit}
    if res is None:
        return out
    if res.memory_limit_in_bytes > 0:
        mem = {"limit": res.memory_limit_in_bytes}
        if res.memory_swap_limit_in_bytes > 0:
            mem["swap"] = res.memory_swap_limit_in_bytes
        out["memory"] = mem
    cpu: dict = {}
    if res.cpu_shares > 0:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota > 0:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period > 0:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    if res.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in res.hugepage_limits]
    return out


def oom_score_adj(res) -> int:
    """The kubelet's oom_score_adj, clamped to >= 0 as containerd's restrict_oom_score_adj does:
    lowering a score below the runtime's own is not permitted here (no CAP_SYS_RESOURCE over it)."""
    value = res.oom_score_adj if res is not None else 0
    return max(0, min(1000, value))


def default_mounts(privileged: bool) -> list[dict]:
    sys_opts = ["nosuid", "noexec", "nodev"] + ([] if privileged else ["ro"])
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]


def bind_mount(destination: str, source: str, readonly: bool, propagation: int = 0) -> dict:
    opts = ["rbind", PROPAGATION.get(propagation, "rprivate"), "ro" if readonly else "rw"]
    return {"destination": destination, "type": "bind", "source": source, "options": opts}


def mounts(config, sandbox: SandboxFiles, privileged: bool) -> list[dict]:
    """Defaults, then the sandbox's files (unless the kubelet mounts its own, as it does for
    /etc/hosts), then the pod's /dev/shm, then the CRI mounts as binds in the kubelet's order."""
    cri_dests = {os.path.normpath(m.container_path) for m in config.mounts}
    out = default_mounts(privileged)
    if "/dev/shm" not in cri_dests:
        if sandbox.shm:
            out.append({"destination": "/dev/shm", "type": "bind", "source": sandbox.shm,
                        "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev", "rw"]})
        else:
            out.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
    for dest, src in (("/etc/hosts", sandbox.hosts), ("/etc/resolv.conf", sandbox.resolv_conf),
                      ("/etc/hostname", sandbox.hostname_file)):
        if src and dest not in cri_dests:
            out.append(bind_mount(dest, src, readonly=False))
    for m in config.mounts:
        if not m.container_path.startswith("/"):
            raise SpecError(f"mount path {m.container_path!r} must be absolute")
        if not os.path.exists(m.host_path):
            raise SpecError(f"failed to mount {m.host_path} at {m.container_path}: the host path "
                            f"does not exist")
        out.append(bind_mount(m.container_path, m.host_path, m.readonly, m.propagation))
    return out


def stop_signal(config, image_config: dict) -> str:
    """The signal StopContainer sends first: the CRI config's, else the image's StopSignal,
    else SIGTERM (a name or number in the image config, as docker accepts)."""
    if getattr(config, "stop_signal", 0):
        name = CRI_SIGNALS[config.stop_signal] if config.stop_signal < len(CRI_SIGNALS) else ""
        if name:
            return name
    value = (image_config.get("StopSignal") or "").strip().upper()
    if not value:
        return "SIGTERM"
    if value.isdigit():
        try:
            return _signal.Signals(int(value)).name
        except ValueError:
            raise SpecError(f"invalid stop signal {value!r} in the image config") from None
    name = value if value.startswith("SIG") else "SIG" + value
    if name not in CRI_SIGNALS:
        raise SpecError(f"invalid stop signal {value!r} in the image config")
    return name


def build_spec(config, sandbox_config, image_config: dict, sandbox: SandboxFiles,
               paths: ContainerPaths) -> dict:
    """The config.json for `config` (CRI ContainerConfig) in the sandbox `sandbox_config`
    (PodSandboxConfig), its image config (OCI image config's "config" object) and the places
    the runtime prepared. Raises SpecError for what the kubelet must report to the user."""
    linux = config.linux if config.HasField("linux") else None
    sc = linux.security_context if linux is not None and linux.HasField("security_context") else None
    res = linux.resources if linux is not None and linux.HasField("resources") else None
    privileged = bool(sc is not None and sc.privileged)
    cwd = config.working_dir or image_config.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise SpecError(f"working directory {cwd!r} must be absolute")
    env = merge_env(image_config.get("Env"), config.envs)
    if sandbox.hostname and not any(e.startswith("HOSTNAME=") for e in env):
        env.append(f"HOSTNAME={sandbox.hostname}")
    process = {
        "terminal": bool(config.tty),
        "user": process_user(sc, image_config, paths.rootfs),
        "args": process_args(config.command, config.args, image_config),
        "env": env,
        "cwd": cwd,
        "capabilities": capabilities(sc),
        # the pod's allowPrivilegeEscalation: false arrives as no_new_privs, as containerd reads it
        "noNewPrivileges": bool(sc is not None and sc.no_new_privs and not privileged),
        "oomScoreAdj": oom_score_adj(res),
    }
    def ns(kind: str, path: str | None) -> dict:
        return {"type": kind, "path": path} if path else {"type": kind}
    namespaces = [ns("pid", None), ns("ipc", sandbox.ipc_ns_path), ns("uts", sandbox.uts_ns_path),
                  ns("mount", None), ns("network", sandbox.netns_path)]
    linux_spec: dict = {
        "resources": resources(res, paths.pids_limit),
        "cgroupsPath": paths.cgroups_path,
        "namespaces": namespaces,
    }
    if privileged:  # every device the cgroup could deny (host device nodes are not copied in)
        linux_spec["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    else:
        masked = list(sc.masked_paths) if sc is not None and sc.masked_paths else list(DEFAULT_MASKED_PATHS)
        ro = list(sc.readonly_paths) if sc is not None and sc.readonly_paths else list(DEFAULT_READONLY_PATHS)
        linux_spec["maskedPaths"] = masked
        linux_spec["readonlyPaths"] = ro
    sysctls = dict(sandbox_config.linux.sysctls) if sandbox_config is not None and \
        sandbox_config.HasField("linux") else {}
    if sysctls:
        linux_spec["sysctl"] = sysctls
    annotations = dict(config.annotations)
    annotations.update(paths.annotations)
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": paths.rootfs, "readonly": bool(sc is not None and sc.readonly_rootfs)},
        "hostname": sandbox.hostname,
        "mounts": mounts(config, sandbox, privileged),
        "annotations": annotations,
        "linux": linux_spec,
    }
