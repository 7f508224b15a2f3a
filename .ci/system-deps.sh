#!/usr/bin/env bash
# System (Debian) packages the test suite needs: headless Chromium for the report-page
# screenshot test. Idempotent: installs only what is missing; a no-op on a ready machine.
set -euo pipefail

packages=(chromium fonts-dejavu-core)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "system-deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
