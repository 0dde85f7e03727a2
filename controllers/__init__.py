"""Layer 3: controllers that reconcile the apiserver's objects toward their spec.

They talk to the control plane only through ``apiserver.client.Client``. The
machinery every controller shares:

- ``informer``: list+watch caches (``Informer``, ``Store`` with indexes,
  ``SharedInformerFactory``) that tell handlers about every change.
- ``workqueue``: ``RateLimitingQueue`` of keys with per-key backoff; one worker
  holds a key at a time.
- ``leaderelection``: ``LeaderElector`` on a coordination Lease, so only one of
  several replicas of a component acts.
- ``events``: ``EventRecorder`` writing core.v1 Events about objects.

A controller = informers whose handlers enqueue keys + workers that take a key,
read the cache, compare desired and actual state, act, and write status.
"""
