#!/usr/bin/env bash
# One-shot, idempotent set-up on a fresh Debian 12 machine:
#   1. QGIS 3.22 + GDAL from Debian (apt) when missing,
#   2. the project venv at .venv (from /usr/bin/python3, --system-site-packages so it sees qgis),
#   3. the pinned Python packages of requirements/dev.txt.
# Re-running it is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-pip: bicorseg:installdependencies runs pip with the Python QGIS uses (Debian ships it separately);
# xvfb: the real QGIS desktop runs headless in tests/plugin/test_desktop.py and scripts/desktop_screenshot.py.
APT_PACKAGES=(qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-pip xvfb xauth)

need_apt=0
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
    echo "[setup] installing QGIS and GDAL from Debian: ${APT_PACKAGES[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv from /usr/bin/python3 with --system-site-packages"
    /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=.venv/.requirements-stamp
if [ ! -f "$stamp" ] || ! cmp -s requirements/dev.txt "$stamp"; then
    echo "[setup] installing pinned Python packages (requirements/dev.txt)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements/dev.txt
    cp requirements/dev.txt "$stamp"
fi

.venv/bin/python - <<'PY'
import numpy, rasterio, onnxruntime, torch, dask, distributed, qgis.core  # noqa: F401 -- fail set-up loudly if anything is missing
print(f"[setup] ok: numpy {numpy.__version__}, rasterio {rasterio.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, QGIS {qgis.core.Qgis.QGIS_VERSION}")
PY
