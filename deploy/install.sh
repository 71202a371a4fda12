#!/usr/bin/env bash
# Set-up on a fresh Debian machine: system packages (when missing and running as root), a venv, IDU.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Mesa/EGL and friends for open3d (headless), libusb for open3d-cpu's import; Debian's Chromium for the
# review UI's browser tests (Playwright drives it; no browser is ever downloaded by `playwright install`).
APT_PACKAGES=(libusb-1.0-0 libgomp1 libgl1 libegl1 chromium fonts-dejavu-core)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "install: apt-get install ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "install: missing system packages ${missing[*]} (run as root, or install them yourself)" >&2
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
# mediapipe 0.10.21 is the last wheel that ships the pose landmarker's weights (BlazePose GHUM full and its
# detector, Apache-2.0): the person branch's default keypoint model, offline. Its metadata asks for
# numpy<2, jax, sounddevice and opencv-contrib, none of which its pose solution uses (it runs on numpy 2,
# measured): installed without them; what it does import is in pyproject.toml.
"$VENV/bin/python" -m pip install -q --no-deps "mediapipe==0.10.21"
"$VENV/bin/python" -c "import torch, pycolmap, gsplat, open3d, prefect, mediapipe; print('install: ok, torch', torch.__version__, 'pycolmap', pycolmap.__version__, 'prefect', prefect.__version__)" >&2
