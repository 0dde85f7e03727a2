"""Cluster DNS: the names of Services and pods under the cluster domain, as Kubernetes' DNS
specification gives them (CoreDNS' kubernetes plugin is the reference), answered on UDP and TCP.

- ``records.py``: the records of the cluster (per Service, an index by name) and one question's
  answer: rcode, answer, authority, additional;
- ``wire.py``: a query's bytes to the response's bytes (dnspython), FORMERR/REFUSED/TC rules, an
  answer cache keyed by the query's bytes;
- ``server.py``: the UDP (fair per client) and TCP sockets, optionally inside a node's netns;
- ``source.py``: informers on Services and EndpointSlices (or Endpoints) keeping the records;
- ``__main__.py``: ``python -m node.dns``, and the ``kube-dns`` Service that reaches it.

The server forwards nowhere: a name outside the cluster domain is REFUSED, so the machine sends
no query outside.
"""
