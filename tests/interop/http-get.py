#!/usr/bin/env python3
"""http-get.py URL [--status]: GET a URL (the tests' curl, from the Python
standard library). Prints the body, or with --status only the HTTP status;
exits 0 when the status was read, whatever it was, 1 when none came."""
import sys
import urllib.error
import urllib.request

url = sys.argv[1]
try:
    with urllib.request.urlopen(url, timeout=5) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError as e:
    print(f"http-get: {url}: {e}", file=sys.stderr)
    sys.exit(1)
if "--status" in sys.argv[2:]:
    print(status)
else:
    sys.stdout.write(body.decode("utf-8", "replace"))
