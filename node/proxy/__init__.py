"""kube-proxy in the nftables mode: Services and their endpoints become nftables rules in a node's
network namespace (table ``ip kube-proxy``), one transaction per sync.

- ``model``: the Service ports and endpoints the proxy reads (the Endpoints adapter lives here);
- ``rules``: the table as data, pure functions of service ports, endpoints and the node;
- ``transaction``: a full or partial nft transaction from two states;
- ``nft``: running nft and conntrack inside the node's namespace;
- ``runner``: syncs batched with a minimum interval;
- ``proxier``: informers, change tracking, the sync, conntrack cleanup;
- ``routes``: the service CIDR route a node namespace without a default route needs;
- ``__main__``: ``python -m node.proxy`` for one node.
"""
