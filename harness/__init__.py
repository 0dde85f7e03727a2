"""The process harness the tests and the benchmarks share: real servers on free 127.0.0.1 ports,
always cleaned up. One package imported under one name (``harness.procs``, never ``procs``), so
there is one process registry and the cleanup that sweeps it sees every process. Files, one idea
each:

- ``procs``: ServerProcess and Member (etcdlite or the real etcd), Registry, clusters, etcdctl
- ``plane``: the control plane's processes (apiserver, controller components) on an etcdlite
- ``faultproxy``: FaultProxy and Partitioner, a fault-injecting TCP proxy for Raft peer links
- ``etcd_client``: gRPC stubs for one endpoint, error_of, wait_until
- ``h2attack``: a raw-frame HTTP/2 attacker and a bystander client (the abuse suite)
- ``spawn_watch``: notices every process a test starts (the ``process`` marker is enforced with it)
- ``powerloss_fs``: a FUSE filesystem that forgets unsynced writes on a "power loss" (as LazyFS)
"""
