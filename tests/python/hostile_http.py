"""Hostile requests against a running `weir serve`, from a client Weir did not write
(Python's http.client). Loopback only; every request is bounded by a socket timeout.

    hostile_http.py BASE_URL PIPELINE   (PIPELINE: a deployed, healthy pipeline)

Checks, exiting 1 with every failure listed:
- oversized, deeply nested, non-UTF-8, non-JSON and wrongly shaped bodies are refused with a
  4xx and a JSON error, never a 5xx or a hang;
- every (method, path) of the server's own /openapi.json is routed (no router 404 or 405),
  and methods the document does not list are refused with 405;
- unknown pipelines, path tricks and bad queries get a 4xx;
- the server still answers /api/health at the end.
Prints one JSON line per request (name, status, seconds).
"""

import http.client
import json
import sys
import time
import urllib.parse

BASE = urllib.parse.urlparse(sys.argv[1])
assert BASE.hostname in ("127.0.0.1", "localhost"), "loopback only"
TIMEOUT = 60
PIPELINE = sys.argv[2]
failures = []


def request(name, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(BASE.hostname, BASE.port, timeout=TIMEOUT)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        status = resp.status
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        # A server may close the connection on a body it refuses to read.
        status, data = 0, str(e).encode()
    finally:
        conn.close()
    took = time.monotonic() - t0
    print(json.dumps({"name": name, "status": status, "seconds": round(took, 3)}), flush=True)
    return status, data


def expect(name, method, path, body=None, statuses=range(400, 500), contains=None,
           headers=None, allow_reset=False):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    status, data = request(name, method, path, body, h)
    ok = status in statuses or (allow_reset and status == 0)
    if not ok:
        failures.append(f"{name}: {method} {path} gave {status} (want {list(statuses)[:3]}...): {data[:300]!r}")
    if contains and contains.encode() not in data:
        failures.append(f"{name}: response lacks {contains!r}: {data[:300]!r}")
    if 400 <= status < 500 and data:
        try:
            json.loads(data)
        except ValueError:
            failures.append(f"{name}: a {status} that is not JSON: {data[:200]!r}")
    return status, data


def deploy_body(definition, schemas=None):
    return json.dumps({"definition": definition, "schemas": schemas or {}})


# Bodies.
expect("oversized body", "POST", "/api/pipelines", b"x" * (9 << 20), allow_reset=True)
expect("deep YAML", "POST", "/api/pipelines", deploy_body("a: " + "[ " * 100_000),
       statuses=[400], contains="nest more than 64 levels deep")
expect("deep braces", "POST", "/api/pipelines", deploy_body("a: " + "{a: " * 100_000),
       statuses=[400], contains="nest more than 64 levels deep")
expect("huge YAML", "POST", "/api/pipelines",
       deploy_body("apiVersion: weir/v1\n#" + "x" * (2 << 20)), statuses=[400],
       contains="larger than 1048576 bytes")
expect("deep JSON", "POST", "/api/pipelines", b'{"definition":' + b"[" * 100_000)
expect("not UTF-8", "POST", "/api/pipelines", b"\xff\xfe\xfd{\"definition\": 1}")
expect("not JSON", "POST", "/api/pipelines", b"definition: yes")
expect("wrong shape", "POST", "/api/pipelines", b'{"definition": 5}')
expect("empty body", "POST", "/api/pipelines", b"")
expect("no content type", "POST", "/api/pipelines", deploy_body("x: 1"),
       headers={"Content-Type": "text/plain"})
expect("YAML that is not a mapping", "POST", "/api/pipelines", deploy_body("- 1\n- 2"),
       statuses=[400])
expect("binary YAML", "POST", "/api/pipelines", deploy_body("\u0000\u0001\u0002: \ufffe"),
       statuses=[400])
expect("schema name with a path", "POST", "/api/pipelines",
       deploy_body("apiVersion: weir/v1", {"../../etc/passwd": "{}"}), statuses=[400])
expect("garbage schema", "POST", "/api/pipelines", deploy_body(
    "apiVersion: weir/v1\nname: junk\nsource: {topics: [t], format: json, schema: x.avsc, "
    "event_time: {field: ts}}\nsteps: []\noutput: {schema: x.avsc}\n",
    {"x.avsc": "{\"type\": " * 10_000}), statuses=[400])
expect("replay garbage", "POST", f"/api/pipelines/{PIPELINE}/replay", b"\x00\x01garbage")
expect("replay bad time", "POST", f"/api/pipelines/{PIPELINE}/replay",
       json.dumps({"from": "yesterday-ish"}).encode(), statuses=[400])

# Names and paths.
expect("unknown pipeline", "GET", "/api/pipelines/no-such-pipeline", statuses=[404])
expect("unknown pause", "POST", "/api/pipelines/no-such-pipeline/pause", statuses=[404])
expect("unknown delete", "DELETE", "/api/pipelines/no-such-pipeline", statuses=[404])
expect("path traversal", "GET", "/api/pipelines/..%2F..%2Fetc%2Fpasswd", statuses=[400, 404])
expect("long name", "GET", "/api/pipelines/" + "a" * 10_000, statuses=[400, 404, 414, 431])
expect("bad query", "DELETE", f"/api/pipelines/{PIPELINE}?purge=maybe", statuses=[400])

# The router against the server's own OpenAPI document.
status, data = request("openapi", "GET", "/openapi.json")
spec = json.loads(data)
documented = set()
for path, item in spec["paths"].items():
    for method in item:
        documented.add((method.upper(), path))
for path in spec["paths"]:
    concrete = path.replace("{name}", "no-such-pipeline")
    for method in ["GET", "POST", "DELETE", "PUT", "PATCH"]:
        if (method, path) in documented:
            if method == "DELETE" or (method == "POST" and "{name}" in path):
                # Acting on a pipeline that does not exist: the handler's own 404.
                s, d = request(f"{method} {path}", method, concrete, b"{}",
                               {"Content-Type": "application/json"})
                if s in (404, 405) and not d.strip().startswith(b"{"):
                    failures.append(f"{method} {path} is documented but not routed ({s})")
            elif method == "GET":
                s, d = request(f"{method} {path}", method, concrete)
                if s == 405 or (s == 404 and not d.strip().startswith(b"{")):
                    failures.append(f"{method} {path} is documented but not routed ({s})")
        else:
            s, _ = request(f"{method} {path} (undocumented)", method, concrete, b"{}",
                           {"Content-Type": "application/json"})
            if s != 405:
                failures.append(f"{method} {path} is not documented but answered {s} (want 405)")

status, data = request("health", "GET", "/api/health")
if status != 200:
    failures.append(f"health after the hostile requests: {status} {data[:200]!r}")

if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
