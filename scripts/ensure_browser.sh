#!/usr/bin/env bash
# Install Debian's chromium for the labelling UI's browser test (tests/test_labeling_browser.py)
# when it is missing and we are root; otherwise do nothing (the test then skips and says why).
set -euo pipefail
BROWSER=/usr/bin/chromium
if [ -x "$BROWSER" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_browser: $BROWSER missing and cannot install it here (not root or no apt-get)" >&2
    exit 0
fi
echo "ensure_browser: installing chromium with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; then
    echo "ensure_browser: apt-get could not install chromium" >&2
fi
exit 0
