"""What a running `weir serve` says, read by parsers Weir did not write. Loopback only;
every request is bounded by a socket timeout.

    api_contract.py BASE_URL PIPELINE   (PIPELINE: a deployed pipeline)

Checks, exiting 1 with every failure listed:
- /metrics parses with the Prometheus project's own text-format parser
  (`prometheus_client.parser`), and holds the pipeline's counters;
- every JSON body of the read endpoints (/api/health, /api/pipelines,
  /api/pipelines/{name}, /api/pipelines/{name}/offsets) validates against the server's own
  /openapi.json (`openapi-schema-validator`, OpenAPI 3.0), strictly: a field the document
  does not declare is a failure too, so the hand-written document cannot drift from the
  types the server writes.
"""

import copy
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from openapi_schema_validator import OAS30Validator
from prometheus_client.parser import text_string_to_metric_families

BASE = sys.argv[1].rstrip("/")
assert urllib.parse.urlparse(BASE).hostname in ("127.0.0.1", "localhost"), "loopback only"
PIPELINE = sys.argv[2]
failures = []


def get(path):
    try:
        with urllib.request.urlopen(BASE + path, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def strict(node):
    """Every object schema with properties refuses undeclared ones."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


status, body = get("/openapi.json")
spec = strict(json.loads(body))

status, body = get("/metrics")
try:
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    print(json.dumps({"metrics_families": len(families)}))
    mine = [
        s
        for f in families.values()
        for s in f.samples
        if s.labels.get("pipeline") == PIPELINE
    ]
    if not mine:
        failures.append(f"/metrics has no sample labelled pipeline={PIPELINE!r}")
    if not any(n.startswith("weir_") for n in families):
        failures.append("/metrics has no weir_ family")
except Exception as e:  # the parser's own error is the finding
    failures.append(f"/metrics does not parse as the Prometheus text format: {e}")

name = urllib.parse.quote(PIPELINE, safe="")
for template, path in [
    ("/api/health", "/api/health"),
    ("/api/pipelines", "/api/pipelines"),
    ("/api/pipelines/{name}", f"/api/pipelines/{name}"),
    ("/api/pipelines/{name}/offsets", f"/api/pipelines/{name}/offsets"),
]:
    status, body = get(path)
    op = spec["paths"][template]["get"]
    response = op["responses"].get(str(status))
    if response is None:
        failures.append(f"GET {path}: status {status} is not in the document: {body[:300]!r}")
        continue
    if "application/json" not in response.get("content", {}):
        print(json.dumps({"path": path, "status": status, "body": "not described"}))
        continue
    schema = response["content"]["application/json"]["schema"]
    # References resolve against the document the schema sits in.
    root = dict(copy.deepcopy(schema), components=spec["components"])
    errors = sorted(OAS30Validator(root).iter_errors(json.loads(body)), key=str)
    print(json.dumps({"path": path, "status": status, "errors": len(errors)}))
    for e in errors[:10]:
        where = "/".join(str(p) for p in e.absolute_path)
        failures.append(f"GET {path}: at `{where}`: {e.message}")

if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
