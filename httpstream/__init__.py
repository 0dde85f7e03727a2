"""Kubernetes' interactive streams over HTTP/1.1 upgrades, shared by the runtime's streaming
server, the kubelet and the apiserver (what k8s.io/apimachinery's util/httpstream is to them).
One idea a module:

- ``http``: reading a request head, writing a plain answer (a Status body for errors)
- ``websocket``: RFC 6455 frames and the server's handshake, bounded
- ``channels``: the channel.k8s.io subprotocols (v1-v5) of exec and attach on a WebSocket
- ``relay``: an upgraded request passed on to another server, bytes both ways (what the
  kubelet and the apiserver do with a stream they do not serve themselves)
- ``spdy``: SPDY/3.1 framing, the port-forward protocol kubectl tunnels in a WebSocket
"""
