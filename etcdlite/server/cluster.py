"""The Cluster service. MemberList is served; membership changes answer
UNIMPLEMENTED until the cluster work lands."""

from __future__ import annotations

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.server.rpc import unary


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, member):
        self.m = member

    @unary
    async def MemberList(self, request, context):
        m = self.m
        cfg = m.cfg
        with m.raft.lock:
            published = dict(m.raft.machine.members)
        members = []
        for name, peer_urls in cfg.initial_cluster.items():
            member_id = cfg.member_ids[name]
            mine = tuple(cfg.advertise_client_urls) if name == cfg.name else ()
            _, client_urls = published.get(member_id, (name, mine))
            members.append(pb.Member(ID=member_id, name=name, peerURLs=peer_urls, clientURLs=client_urls))
        resp = pb.MemberListResponse(members=members)
        m.header(resp.header)  # etcd sets no revision on Cluster responses
        return resp
