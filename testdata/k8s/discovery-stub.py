#!/usr/bin/env python3
"""A fixture standing in for a Kubernetes API server's discovery endpoints, so that the real
kubectl can run `apply --dry-run=client` offline (tests/matrix.rs).

kubectl needs a server even for client-side dry runs: it maps each document's apiVersion and
kind to a resource through discovery (/api, /apis, /api/v1, /apis/<group>/<version>), then GETs
the object to decide between create and patch. This stub answers discovery for the kinds
`kib matrix render` writes (v1 ConfigMap, batch/v1 Job, argoproj.io/v1alpha1 Workflow) with the
same JSON shapes a real API server sends, answers 404 NotFound for every object (so every apply
is a create), and refuses everything else with 404 too. It serves no OpenAPI document, so
kubectl runs with --validate=false; the schema checks are kubernetes-validate's and the Argo
JSON schema's. Every request is logged to stderr.

Usage: discovery-stub.py    Prints the port it listens on (127.0.0.1) as its first line.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def resource(name, kind, namespaced=True, short=()):
    return {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": list(short)}

GROUPS = {
    "batch": ("v1", [resource("jobs", "Job")]),
    "argoproj.io": ("v1alpha1", [resource("workflows", "Workflow", short=("wf",))]),
}
DOCS = {
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [resource("configmaps", "ConfigMap", short=("cm",)), resource("namespaces", "Namespace", namespaced=False)]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}], "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
        for g, (v, _) in GROUPS.items()]},
}
for g, (v, res) in GROUPS.items():
    DOCS[f"/apis/{g}/{v}"] = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{g}/{v}", "resources": res}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        doc = DOCS.get(path)
        if doc is not None:
            self.send(200, doc)
        else:
            self.send(404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": f"{path} not found", "reason": "NotFound", "code": 404})

    def send(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("discovery-stub: " + (fmt % args) + "\n")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
