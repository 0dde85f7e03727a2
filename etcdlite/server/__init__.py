"""An etcdlite member serving etcd's v3 gRPC API. Files, one idea each:

- ``member``: Member (Raft, the state machine, watchers, lease clock and servers, wired together)
- ``backend``: Backend, what the services use of their member
- ``group_commit``: GroupCommit (writes batched into Raft entries, answered once applied)
- ``read_barrier``: ReadBarrier (linearizable reads, one barrier shared by the readers waiting)
- ``response_header``: ResponseHeaders (every response's header, as a message or as bytes)
- ``kv``, ``watch``, ``lease``, ``cluster``, ``maintenance``: the etcd services
- ``lock``, ``election``: etcd's Lock and Election services; ``concurrency``: what they share
  (sessions' leases, waiting for deletes in the watch hub)
- ``checks``: what is refused before a request is proposed
- ``space_quota``: the space quota before Raft; ``corruption``: the corruption checks (members'
  hashes compared, the CORRUPT alarm)
- ``metrics``: MemberMetrics (etcd's Prometheus metrics, read at a scrape); ``metrics_listener``:
  the HTTP/1.1 server of --listen-metrics-urls (/metrics, /health)
- ``rpc``: the handlers' shared error handling (etcd errors as gRPC statuses); the server
  itself is the top-level package ``grpclite``
"""
