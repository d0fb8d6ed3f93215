#!/usr/bin/env bash
# The programs the project needs beside Python: HAProxy (the model service's front door, which switches traffic
# between the blue and green deployment slots), wrk (the serving benchmark's load generator) and Chromium (the
# browser test of the Airflow UI drives Debian's headless Chromium through Playwright).
# Installs them from Debian's packages when missing and this is root; otherwise says what to install.
set -euo pipefail
missing=()
command -v haproxy > /dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk > /dev/null || missing+=(wrk)
command -v chromium > /dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
    echo "Installing ${missing[*]} from Debian's packages..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null; }
    exit 0
fi
echo "Missing: ${missing[*]}. Install them first (Debian/Ubuntu: sudo apt-get install ${missing[*]};" \
     "macOS: brew install ${missing[*]})." >&2
exit 1
