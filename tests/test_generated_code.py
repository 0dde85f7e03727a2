"""The committed protobuf code must be what `make proto` generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.process
def test_generated_protobuf_code_is_fresh(tmp_path):
    protos = sorted(str(p.relative_to(REPO)) for p in (REPO / "proto").rglob("*.proto"))
    assert protos, "no .proto files under proto/"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto",
         f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos],
        cwd=REPO, check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py"))
    assert generated
    stale = [str(rel) for rel in generated if (REPO / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"


def test_wire_names_match_etcd():
    from etcdlite.pb.etcdserverpb import rpc_pb2
    from etcdlite.pb.mvccpb import kv_pb2

    assert rpc_pb2.DESCRIPTOR.package == "etcdserverpb"
    assert kv_pb2.DESCRIPTOR.package == "mvccpb"
    services = rpc_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"KV", "Watch", "Lease", "Cluster", "Maintenance", "Auth"}
    assert services["Auth"].methods_by_name["Authenticate"].full_name == "etcdserverpb.Auth.Authenticate"
    assert services["KV"].methods_by_name["Range"].full_name == "etcdserverpb.KV.Range"
    # a few field numbers clients depend on
    assert rpc_pb2.WatchResponse.DESCRIPTOR.fields_by_name["events"].number == 11
    assert rpc_pb2.Compare.DESCRIPTOR.fields_by_name["range_end"].number == 64
    assert rpc_pb2.StatusResponse.DESCRIPTOR.fields_by_name["raftAppliedIndex"].number == 7
    assert rpc_pb2.AuthRoleRevokePermissionRequest.DESCRIPTOR.fields_by_name["range_end"].number == 3
    assert rpc_pb2.AuthUserAddRequest.DESCRIPTOR.fields_by_name["options"].number == 3


def test_lock_and_election_wire_names_match_etcd():
    from etcdlite.pb.v3electionpb import v3election_pb2
    from etcdlite.pb.v3lockpb import v3lock_pb2

    assert v3lock_pb2.DESCRIPTOR.package == "v3lockpb"
    assert v3election_pb2.DESCRIPTOR.package == "v3electionpb"
    lock = v3lock_pb2.DESCRIPTOR.services_by_name["Lock"]
    assert {m.full_name for m in lock.methods} == {"v3lockpb.Lock.Lock", "v3lockpb.Lock.Unlock"}
    election = v3election_pb2.DESCRIPTOR.services_by_name["Election"]
    assert {m.name for m in election.methods} == {"Campaign", "Proclaim", "Leader", "Observe", "Resign"}
    assert election.methods_by_name["Observe"].server_streaming
    fields = v3election_pb2.LeaderKey.DESCRIPTOR.fields_by_name
    assert [fields[f].number for f in ("name", "key", "rev", "lease")] == [1, 2, 3, 4]
    assert v3election_pb2.CampaignRequest.DESCRIPTOR.fields_by_name["value"].number == 3
    assert v3election_pb2.LeaderResponse.DESCRIPTOR.fields_by_name["kv"].message_type.full_name == "mvccpb.KeyValue"
    assert v3lock_pb2.LockResponse.DESCRIPTOR.fields_by_name["key"].number == 2


def test_kubelet_api_names():
    """The kubelet's API (node/pb/kubelet.proto) and the apiserver's pods/log and pods/exec
    calls that proxy to it: names and streaming shapes clients depend on."""
    from apiserver.pb import api_pb2
    from node.pb import kubelet_pb2

    assert kubelet_pb2.DESCRIPTOR.package == "node.kubelet.v1"
    kubelet = kubelet_pb2.DESCRIPTOR.services_by_name["Kubelet"]
    assert kubelet.methods_by_name["ContainerLogs"].server_streaming
    assert not kubelet.methods_by_name["Exec"].server_streaming
    api = api_pb2.DESCRIPTOR.services_by_name["ApiServer"]
    assert api.methods_by_name["Logs"].full_name == "apiserver.v1.ApiServer.Logs"
    assert api.methods_by_name["Logs"].server_streaming
    assert api.methods_by_name["Exec"].output_type.name == "PodExecResponse"
