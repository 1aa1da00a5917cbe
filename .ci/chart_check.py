#!/usr/bin/env python3
"""Strict checks of the manifests `helm template` rendered (called by .ci/chart).

- Kubernetes kinds: kubernetes-validate with the strict schemas (unknown fields fail), for each
  version given with --k8s. A kind it has no schema for fails, except the two CRDs below.
- ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1, not in kubernetes-validate): a
  strict structural schema of the fields the Prometheus Operator defines for the parts the chart
  writes (metadata, endpoints, relabelings, rule groups, rules), unknown fields failing.
- Every PromQL expression (PrometheusRule rules, the Grafana dashboard's panels) is parsed with
  promql-parser; with --metrics URL every previewdb_* series an expression selects must be one
  the live service exposes, and every label it matches on one those series carry (or one that
  Prometheus adds at scrape time).
"""
import argparse
import json
import re
import sys
import urllib.request

import jsonschema
import kubernetes_validate
import promql_parser
import yaml

DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}


def closed(props, required=()):
    return {"type": "object", "additionalProperties": False, "properties": props, "required": list(required)}


METADATA = closed({"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": STRMAP, "annotations": STRMAP}, ["name"])
RELABEL = closed({
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap",
                        "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase", "Uppercase",
                        "keepequal", "KeepEqual", "dropequal", "DropEqual"]},
    "modulus": {"type": "integer"}, "regex": {"type": "string"}, "replacement": {"type": "string"},
    "separator": {"type": "string"}, "sourceLabels": {"type": "array", "items": {"type": "string"}},
    "targetLabel": {"type": "string"},
})
ENDPOINT = closed({
    "port": {"type": "string"}, "targetPort": {"type": ["string", "integer"]}, "path": {"type": "string"},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]}, "params": {"type": "object"},
    "interval": DURATION, "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
    "honorTimestamps": {"type": "boolean"}, "trackTimestampsStaleness": {"type": "boolean"},
    "filterRunning": {"type": "boolean"}, "followRedirects": {"type": "boolean"},
    "metricRelabelings": {"type": "array", "items": RELABEL}, "relabelings": {"type": "array", "items": RELABEL},
    "tlsConfig": {"type": "object"}, "authorization": {"type": "object"}, "basicAuth": {"type": "object"},
    "bearerTokenSecret": {"type": "object"}, "proxyUrl": {"type": "string"},
})
LABEL_SELECTOR = closed({"matchLabels": STRMAP, "matchExpressions": {"type": "array", "items": {"type": "object"}}})
SERVICE_MONITOR = closed({
    "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": METADATA,
    "spec": closed({
        "endpoints": {"type": "array", "minItems": 1, "items": ENDPOINT},
        "selector": LABEL_SELECTOR,
        "namespaceSelector": closed({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}),
        "jobLabel": {"type": "string"}, "targetLabels": {"type": "array", "items": {"type": "string"}},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}}, "sampleLimit": {"type": "integer"},
    }, ["endpoints", "selector"]),
}, ["apiVersion", "kind", "metadata", "spec"])
RULE = {
    **closed({
        "alert": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"type": ["string", "integer"]}, "for": DURATION, "keep_firing_for": DURATION,
        "labels": STRMAP, "annotations": STRMAP,
    }, ["expr"]),
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
PROMETHEUS_RULE = closed({
    "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": METADATA,
    "spec": closed({"groups": {"type": "array", "minItems": 1, "items": closed({
        "name": {"type": "string", "minLength": 1}, "interval": DURATION, "labels": STRMAP, "limit": {"type": "integer"},
        "partial_response_strategy": {"type": "string"}, "query_offset": DURATION,
        "rules": {"type": "array", "minItems": 1, "items": RULE},
    }, ["name"])}}, ["groups"]),
}, ["apiVersion", "kind", "metadata", "spec"])
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
        ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE}

# Labels Prometheus adds to scraped series (ServiceMonitor targets), on top of the exposition's.
TARGET_LABELS = {"__name__", "job", "instance", "namespace", "service", "pod", "container", "endpoint"}
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def selectors(expr):
    """(metric name, label names matched) of every vector selector in expr."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            names = [m.name for m in node.matchers.matchers]
            found.append((node.name, names))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def exposition(url):
    """metric name -> label names seen on its samples, from a live /metrics."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    series = {}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for line in text.splitlines():
        m = re.match(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$", line)
        if m:
            # A family with no sample yet (a counter nothing has counted) still names its series:
            # None = exported, its labels not yet seen.
            for suffix in suffixes.get(m.group(2), [""]):
                series.setdefault(m.group(1) + suffix, None)
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        if not m:
            sys.exit(f"unparsable exposition line: {line!r}")
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        series[m.group(1)] = (series.get(m.group(1)) or set()) | labels
    return series


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--k8s", action="append", required=True, help="Kubernetes version to validate against")
    ap.add_argument("--metrics", help="URL of a live previewdb /metrics")
    args = ap.parse_args()
    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    problems, exprs, counts = [], [], {}
    for d in docs:
        kind, api, name = d.get("kind"), d.get("apiVersion"), d.get("metadata", {}).get("name")
        what = f"{kind}/{name}"
        counts[kind] = counts.get(kind, 0) + 1
        crd = CRDS.get((api, kind))
        if crd is not None:
            errors = sorted(jsonschema.Draft7Validator(crd).iter_errors(d), key=str)
            problems += [f"{what}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
        else:
            for v in args.k8s:
                try:
                    kubernetes_validate.validate(d, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    problems.append(f"{what} (k8s {v}): {'/'.join(map(str, e.path))}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError:
                    problems.append(f"{what}: no schema for {api} {kind} in Kubernetes {v}")
        if kind == "PrometheusRule":
            for g in d.get("spec", {}).get("groups", []):
                for r in g.get("rules", []):
                    exprs.append((f"{what} {r.get('alert') or r.get('record')}", str(r["expr"])))
        if kind == "ConfigMap":
            for key, text in (d.get("data") or {}).items():
                if key.endswith(".json") and '"panels"' in text:
                    board = json.loads(text)
                    for p in board["panels"]:
                        for t in p.get("targets", []):
                            e = t["expr"]
                            for var, val in GRAFANA_VARS.items():
                                e = e.replace(var, val)
                            exprs.append((f"{what} panel {p['title']!r}", e.replace("$namespace", "ns").replace("$job", "job")))
                    if not board["panels"]:
                        problems.append(f"{what}: dashboard without panels")
    series = exposition(args.metrics) if args.metrics else None
    unseen = set()
    for where, e in exprs:
        try:
            sels = selectors(e)
        except Exception as ex:  # promql_parser raises ValueError-like errors
            problems.append(f"{where}: PromQL does not parse: {ex}: {e}")
            continue
        if series is None:
            continue
        for metric, labels in sels:
            if not metric.startswith("previewdb_"):
                continue
            if metric not in series:
                problems.append(f"{where}: {metric} is not exported by previewdb")
                continue
            if series[metric] is None:
                unseen.add(metric)
                continue
            unknown = set(labels) - series[metric] - TARGET_LABELS
            if unknown:
                problems.append(f"{where}: {metric} has no label {sorted(unknown)}")
    print(f"{args.rendered}: {len(docs)} manifests ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}); "
          f"{len(exprs)} PromQL expressions parsed"
          + (f", their series checked against {args.metrics}" if series is not None else ", series not checked (no --metrics)"))
    if unseen:
        print(f"  exported but without samples yet, so their labels were not checked: {', '.join(sorted(unseen))}")
    for p in problems:
        print("  FAIL", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
