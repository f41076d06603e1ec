#!/bin/sh
# Build step of both images: make sure the base has torch VERSION, installing it from
# INDEX_URL when the base has none (a plain Python image). A base with another torch
# fails here, not halfway through the pinned requirements.
#   install_torch.sh VERSION [INDEX_URL]
set -eu
version=$1
index=${2:-}
have=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ -z "$have" ]; then
    if [ -z "$index" ]; then
        echo "error: the base image has no torch; build with --build-arg TORCH_INDEX_URL=..." >&2
        exit 1
    fi
    python3 -m pip install --no-cache-dir --index-url "$index" "torch==$version"
    have=$(python3 -c 'import torch; print(torch.__version__)')
fi
case "$have" in
    "$version" | "$version"+*) ;;
    *) echo "error: the base image has torch $have, the locks are for $version" >&2; exit 1 ;;
esac
echo "torch $have on Python $(python3 -c 'import platform; print(platform.python_version())')"
