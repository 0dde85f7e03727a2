"""The few rtnetlink requests a pod attach makes, sent from this process: a veth pair with its
peer in another namespace, a link's master and up flag, an IPv4 address, a default route, a
neighbour entry's removal.

Why not ``ip -batch``: an attach ran two ``ip`` processes (one per namespace), each a few
milliseconds of CPU for its start-up alone; the requests themselves are a few hundred bytes.
A netlink socket belongs to the namespace of the thread that opened it, so the node's and the
pod's sockets are opened through netns.run_in and then used from the caller's thread.

Each request asks for an acknowledgement (NLM_F_ACK) and a failure raises ``RtnlError`` with the
kernel's errno, which the caller turns into the same NetworkError an ``ip`` line gave.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_DELNEIGH = 16, 17, 20, 24, 29
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_REPLACE = 0x1, 0x4, 0x200, 0x400, 0x100
NLMSG_ERROR = 2
IFF_UP = 0x1
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY = 4, 5
NDA_DST = 1
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
NLA_F_NESTED = 0x8000

_IFINFOMSG = struct.Struct("=BxHiII")      # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBi")       # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")       # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")        # family, ifindex, state, flags, type
_NLMSGHDR = struct.Struct("=IHHII")


class RtnlError(OSError):
    """The kernel refused a request: ``errno``, ``strerror`` and ``what`` was asked (as an
    ``ip`` command line)."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, os.strerror(code))
        self.what = what

    def __str__(self) -> str:
        return f"{self.what}: {self.strerror}"


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _name(s: str) -> bytes:
    return s.encode() + b"\0"


class Rtnl:
    """A NETLINK_ROUTE socket of the namespace it was opened in (see ``open_in``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, msg_type: int, flags: int, body: bytes, what: str) -> None:
        """Send one request and wait for its acknowledgement; RtnlError when refused."""
        self.seq += 1
        hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags,
                             self.seq, 0)
        self.sock.send(hdr + body)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, mtype, _, seq, _ = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    break
                if mtype == NLMSG_ERROR and seq == self.seq:
                    code = -struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
                    if code:
                        raise RtnlError(code, what)
                    return
                off += (length + 3) & ~3

    def ifindex(self, name: str) -> int:
        """A link's index in this socket's namespace (ENODEV as RtnlError when there is none)."""
        # SIOCGIFINDEX would need a socket of the namespace too; this one is.
        import fcntl
        try:
            res = fcntl.ioctl(self.sock.fileno(), 0x8933, struct.pack("16si12x", name.encode(), 0))
        except OSError as e:
            raise RtnlError(e.errno, f"link show {name}") from None
        return struct.unpack_from("16si", res)[1]

    def add_veth(self, name: str, peer: str, peer_netns_fd: int) -> None:
        """``ip link add NAME type veth peer name PEER netns <fd>``"""
        peer_info = _IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(peer)) + \
            _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        linkinfo = _attr(IFLA_INFO_KIND, _name("veth")) + \
            _attr(IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER | NLA_F_NESTED, peer_info))
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name)) + \
            _attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body,
                     f"link add {name} type veth peer name {peer}")

    def del_link(self, name: str) -> bool:
        """``ip link del NAME``; False when there is no such link (a veth's peer goes with it)."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
        try:
            self.request(RTM_DELLINK, 0, body, f"link del {name}")
        except RtnlError as e:
            if e.errno == errno.ENODEV:
                return False
            raise
        return True

    def set_link(self, name: str, *, up: bool = True, master: str | None = None) -> None:
        """``ip link set NAME [master M] up``"""
        index = self.ifindex(name)
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
        if master is not None:
            body += _attr(IFLA_MASTER, struct.pack("=I", self.ifindex(master)))
        self.request(RTM_NEWLINK, 0, body, f"link set {name}" + (f" master {master}" if master else "")
                     + (" up" if up else " down"))

    def replace_addr(self, dev: str, addr: str, prefixlen: int) -> None:
        """``ip addr replace ADDR/PREFIXLEN dev DEV`` (IPv4)"""
        packed = ipaddress.IPv4Address(addr).packed
        body = _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, self.ifindex(dev)) + \
            _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body,
                     f"addr replace {addr}/{prefixlen} dev {dev}")

    def replace_default_route(self, gateway: str, dev: str) -> None:
        """``ip route replace default via GATEWAY dev DEV``"""
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                           RTN_UNICAST, 0) + \
            _attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed) + \
            _attr(RTA_OIF, struct.pack("=I", self.ifindex(dev)))
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body,
                     f"route replace default via {gateway} dev {dev}")

    def forget_neighbour(self, dev: str, addr: str) -> None:
        """``ip neigh flush dev DEV to ADDR`` for one address: its entry removed, if any."""
        body = _NDMSG.pack(socket.AF_INET, self.ifindex(dev), 0, 0, 0) + \
            _attr(NDA_DST, ipaddress.IPv4Address(addr).packed)
        try:
            self.request(RTM_DELNEIGH, 0, body, f"neigh del {addr} dev {dev}")
        except RtnlError as e:
            if e.errno != errno.ENOENT:
                raise


def open_in(netns: str) -> Rtnl:
    """An rtnetlink socket of the named namespace, usable from any thread."""
    from .netns import run_in
    return Rtnl(run_in(netns, socket.socket, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_ROUTE))
