"""etcdlite benchmark suite: `python -m benchmarks` (see README.md, "Benchmarks").

Starts etcdlite (1 and 3 members), the real etcd 3.4 (1 and 3 members) and a bare
gRPC Put server on free 127.0.0.1 ports, runs the same load against each in one
run, and writes benchmarks/results.md and benchmarks/results.json.
"""
