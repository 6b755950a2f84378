"""The image's HEALTHCHECK: GET /health on this container's service port; exit 0 when it answers 200.

The port is the one the service listens on: PYSTACKER_PORT for meta, registry, send and gateway,
PYSTACKER_METRICS_PORT for the flusher and msgflusher (which serve no other HTTP). Set it explicitly:
the image runs every service, so it cannot know a default.
"""

import os
import sys
import urllib.request

port = os.environ.get("PYSTACKER_PORT") or os.environ.get("PYSTACKER_METRICS_PORT")
if not port or port == "0":
    sys.exit("healthcheck: set PYSTACKER_PORT (or PYSTACKER_METRICS_PORT for the flushers)")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    sys.exit(f"healthcheck: http://127.0.0.1:{port}/health: {exc}")
