"""``python -m node.kubelet``: the real kubelet (node/kubelet/real.py) for one node."""

from node.kubelet.real import main

raise SystemExit(main())
