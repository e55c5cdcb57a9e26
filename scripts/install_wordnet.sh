#!/usr/bin/env bash
# Make WordNet available offline for METEOR (`pointllm eval metrics`). Idempotent.
#
# 1. If pointllm already finds WordNet (NLTK's own data, or a layout built earlier), do nothing.
# 2. Else, as root with apt-get: install Debian's wordnet-base (the database, 28 MB), running
#    `apt-get update` first only if the package is unknown.
# 3. Let pointllm build its NLTK layout from /usr/share/wordnet (under $POINTLLM_HOME/nltk_data).
# Without root or apt-get it only warns: METEOR is then reported as null, nothing else changes.
#
# Usage: scripts/install_wordnet.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail

PY="${1:-.venv/bin/python}"
PACKAGES=(wordnet-base)

locate() {
    "$PY" -c 'import sys
from pointllm.eval.metrics import locate_wordnet
path = locate_wordnet()
print(path or "")
sys.exit(0 if path else 1)' 2>/dev/null
}

warn() {
    echo "install_wordnet: warning: $*; METEOR will be null in 'pointllm eval metrics'" >&2
    echo "install_wordnet: (install Debian's ${PACKAGES[*]} as root, or run" \
        "python -m nltk.downloader wordnet once with network)" >&2
}

if found="$(locate)"; then
    echo "install_wordnet: WordNet found at $found"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    warn "WordNet not found and cannot install it here (needs root and apt-get)"
    exit 0
fi
if ! apt-cache show "${PACKAGES[@]}" >/dev/null 2>&1; then
    apt-get update -q
fi
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; then
    warn "apt-get install ${PACKAGES[*]} failed"
    exit 0
fi
if found="$(locate)"; then
    echo "install_wordnet: WordNet installed; NLTK reads it from $found"
else
    warn "WordNet was installed but NLTK still cannot load it"
fi
