"""Container health check: exit 0 when radflow's /readyz answers 200, 1 otherwise.

The admin port comes from RADFLOW_HTTP__PORT when the site moved it (default 8080)."""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("RADFLOW_HTTP__PORT", "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=4) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except (OSError, urllib.error.URLError):
    sys.exit(1)
