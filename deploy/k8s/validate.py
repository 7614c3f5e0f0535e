#!/usr/bin/env python3
"""Validates the Kubernetes manifests of deploy/k8s offline.

  deploy/k8s/validate.py           schema and reference checks; exit 0 when all pass
  deploy/k8s/validate.py --dump    every resource (generated ConfigMaps included) as one
                                   JSON array on stdout, for tests; needs only PyYAML

What is checked:
- Every resource of a core or built-in API kind against the Kubernetes OpenAPI schemas
  shipped inside the `kubernetes-validate` package (PyPI), in strict mode (unknown fields
  are errors), for the oldest Kubernetes these manifests support and for the newest the
  package knows. No network: the schemas are files of the package.
- Kinds that come from CRDs (ServiceMonitor) have no schema there: they are checked with
  `jsonschema` against the schema in schemas/<kind>.schema.json, written for this
  repository (the fields the manifests use; see its $comment).
- References between resources, which no schema sees: selectors match pod labels, named
  ports exist, Secrets, ConfigMaps and their keys exist, volume mounts have volumes, every
  container has CPU and memory requests and limits, pods run as non-root, and every file
  is listed in kustomization.yaml or named in APPLIED_SEPARATELY.

Exit status: 0 valid, 1 invalid, 3 a Python package is missing (PyYAML, or for the schema
checks kubernetes-validate).
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# backoffLimitPerIndex (workers.yaml) is on by default from Kubernetes 1.29.
OLDEST_SUPPORTED = "1.29"
# Files applied on their own, not through kustomization.yaml (see its comments).
APPLIED_SEPARATELY = ("secrets.yaml", "servicemonitor.yaml")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
CLUSTER_SCOPED = ("Namespace",)

try:
    import yaml
except ImportError:
    print("MISSING the Python package yaml (pip install pyyaml)")
    sys.exit(3)


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_resources():
    """Every resource of deploy/k8s with the file it came from, plus the kustomization."""
    kust = load_yaml_docs(os.path.join(HERE, "kustomization.yaml"))[0]
    listed = kust.get("resources", [])
    resources = []
    errors = []
    for name in sorted(os.listdir(HERE)):
        if not name.endswith((".yaml", ".yml")) or name == "kustomization.yaml":
            continue
        try:
            docs = load_yaml_docs(os.path.join(HERE, name))
        except yaml.YAMLError as e:
            errors.append(f"{name}: not YAML: {e}")
            continue
        for doc in docs:
            resources.append((name, doc))
    for name in listed:
        if not os.path.isfile(os.path.join(HERE, name)):
            errors.append(f"kustomization.yaml lists {name}, which does not exist")
    # configMapGenerator / secretGenerator: the objects kustomize would make (without the
    # name hash; references by name are rewritten by kustomize).
    for gen_key, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for gen in kust.get(gen_key, []):
            data = {}
            for entry in gen.get("files", []):
                key, _, path = entry.partition("=") if "=" in entry else (os.path.basename(entry), "", entry)
                full = os.path.join(HERE, path)
                if not os.path.isfile(full):
                    errors.append(f"kustomization.yaml {gen_key} {gen['name']}: no file {path}")
                    continue
                with open(full) as f:
                    data[key] = f.read()
            for lit in gen.get("literals", []):
                key, _, value = lit.partition("=")
                data[key] = value
            obj = {
                "apiVersion": "v1",
                "kind": kind,
                "metadata": {"name": gen["name"], "namespace": kust.get("namespace", "default")},
                ("data" if kind == "ConfigMap" else "stringData"): data,
            }
            resources.append(("kustomization.yaml", obj))
    return kust, listed, resources, errors


def pod_templates(resources):
    """(file, resource, pod template) of every workload."""
    out = []
    for name, r in resources:
        if r.get("kind") in WORKLOAD_KINDS:
            out.append((name, r, r.get("spec", {}).get("template", {})))
    return out


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def kn(r):
    return f"{r.get('kind')}/{r.get('metadata', {}).get('name')}"


def check_references(kust, listed, resources):
    errors = []
    namespace = kust.get("namespace")
    by_kind = {}
    for _, r in resources:
        by_kind.setdefault(r.get("kind"), {})[r["metadata"]["name"]] = r
    secrets = by_kind.get("Secret", {})
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})
    templates = pod_templates(resources)

    def secret_keys(name):
        s = secrets.get(name)
        if s is None:
            return None
        return set(s.get("data", {}) or {}) | set(s.get("stringData", {}) or {})

    for name, r in resources:
        ns = r.get("metadata", {}).get("namespace")
        if r.get("kind") not in CLUSTER_SCOPED and namespace and ns not in (None, namespace):
            errors.append(f"{name}: {kn(r)} is in namespace {ns}, kustomization.yaml says {namespace}")

    for name, r, tpl in templates:
        where = f"{name}: {kn(r)}"
        labels = tpl.get("metadata", {}).get("labels", {})
        sel = r["spec"].get("selector", {}).get("matchLabels")
        if r["kind"] != "Job" and not labels_match(sel, labels):
            errors.append(f"{where}: selector {sel} does not match the pod labels {labels}")
        spec = tpl.get("spec", {})
        pod_sc = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in r["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "secret" in v:
                keys = secret_keys(v["secret"]["secretName"])
                if keys is None:
                    errors.append(f"{where}: volume {v['name']}: no Secret {v['secret']['secretName']}")
                    continue
                for item in v["secret"].get("items", []):
                    if item["key"] not in keys:
                        errors.append(f"{where}: volume {v['name']}: Secret {v['secret']['secretName']} has no key {item['key']}")
            if "configMap" in v:
                cm = configmaps.get(v["configMap"]["name"])
                if cm is None:
                    errors.append(f"{where}: volume {v['name']}: no ConfigMap {v['configMap']['name']}")
                    continue
                for item in v["configMap"].get("items", []):
                    if item["key"] not in cm.get("data", {}):
                        errors.append(f"{where}: volume {v['name']}: ConfigMap {cm['metadata']['name']} has no key {item['key']}")
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            cw = f"{where} container {c['name']}"
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in claims:
                    errors.append(f"{cw}: mount {m['name']} has no volume")
            for src in c.get("envFrom", []):
                if "secretRef" in src and src["secretRef"]["name"] not in secrets:
                    errors.append(f"{cw}: envFrom: no Secret {src['secretRef']['name']}")
                if "configMapRef" in src and src["configMapRef"]["name"] not in configmaps:
                    errors.append(f"{cw}: envFrom: no ConfigMap {src['configMapRef']['name']}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in (secret_keys(ref["name"]) or set()):
                    errors.append(f"{cw}: env {e['name']}: no key {ref['key']} in Secret {ref['name']}")
            port_names = {p.get("name") for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                p = c.get(probe, {})
                port = (p.get("httpGet") or p.get("tcpSocket") or p.get("grpc") or {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    errors.append(f"{cw}: {probe} names port {port}, which the container does not have")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    if what not in res.get(part, {}):
                        errors.append(f"{cw}: no {what} in resources.{part}")
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                errors.append(f"{cw}: runAsNonRoot is not set")
            image = c.get("image", "")
            known = {i["name"] for i in kust.get("images", [])}
            if image not in known and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                errors.append(f"{cw}: image {image!r} has no pinned tag and no entry in kustomization.yaml images")
        if r["kind"] == "StatefulSet":
            svc = services.get(r["spec"].get("serviceName"))
            if svc is None or svc["spec"].get("clusterIP") != "None":
                errors.append(f"{where}: serviceName {r['spec'].get('serviceName')} is not a headless Service here")

    def pods_selected(selector):
        return [(n, r, t) for n, r, t in templates
                if labels_match(selector, t.get("metadata", {}).get("labels", {}))]

    for name, r in resources:
        kind = r.get("kind")
        where = f"{name}: {kn(r)}"
        if kind == "Service":
            pods = pods_selected(r["spec"].get("selector"))
            if not pods:
                errors.append(f"{where}: selector matches no pod template")
            for p in r["spec"].get("ports", []):
                tp = p.get("targetPort")
                if isinstance(tp, str):
                    for _, pr, t in pods:
                        names = {cp.get("name") for c in t["spec"]["containers"] for cp in c.get("ports", [])}
                        if tp not in names:
                            errors.append(f"{where}: targetPort {tp} is not a container port of {kn(pr)}")
        elif kind == "PodDisruptionBudget":
            if not pods_selected(r["spec"].get("selector", {}).get("matchLabels")):
                errors.append(f"{where}: selector matches no pod template")
        elif kind == "NetworkPolicy":
            if not pods_selected(r["spec"].get("podSelector", {}).get("matchLabels")):
                errors.append(f"{where}: podSelector matches no pod template")
            for rule in r["spec"].get("ingress", []):
                for peer in rule.get("from", []):
                    ps = peer.get("podSelector", {}).get("matchLabels")
                    if ps is not None and not pods_selected(ps):
                        errors.append(f"{where}: ingress podSelector {ps} matches no pod template")
        elif kind == "ServiceMonitor":
            sel = r["spec"]["selector"].get("matchLabels")
            svcs = [s for s in services.values() if labels_match(sel, s["metadata"].get("labels", {}))]
            if not svcs:
                errors.append(f"{where}: selector matches no Service")
            for ep in r["spec"]["endpoints"]:
                for s in svcs:
                    if ep.get("port") not in {p.get("name") for p in s["spec"]["ports"]}:
                        errors.append(f"{where}: endpoint port {ep.get('port')} is not a port of Service {s['metadata']['name']}")
                cred = (ep.get("authorization") or {}).get("credentials") or ep.get("bearerTokenSecret")
                if cred and cred["key"] not in (secret_keys(cred["name"]) or set()):
                    errors.append(f"{where}: no key {cred['key']} in Secret {cred['name']}")
    return errors


def main():
    kust, listed, resources, errors = load_resources()
    if "--dump" in sys.argv[1:]:
        json.dump([dict(r, **{"x-file": name}) for name, r in resources], sys.stdout)
        return 1 if errors else 0
    try:
        import jsonschema
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError
    except ImportError as e:
        print(f"MISSING the Python package {e.name} (pip install kubernetes-validate)")
        return 3
    versions = [OLDEST_SUPPORTED, kubernetes_validate.utils.latest_version()]
    if OLDEST_SUPPORTED not in [kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()]:
        print(f"kubernetes-validate {kubernetes_validate.version.__version__} has no schemas for {OLDEST_SUPPORTED}")
        return 3
    files_seen = set()
    checked = 0
    for name, r in resources:
        kind = r.get("kind", "?")
        try:
            for v in versions:
                kubernetes_validate.validate(r, v, strict=True)
            checked += 1
            files_seen.add(name)
            continue
        except SchemaNotFoundError:
            pass
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{name}: {kn(r)} (Kubernetes {e.version}): {path}: {e.message}")
            continue
        schema_path = os.path.join(HERE, "schemas", f"{kind.lower()}.schema.json")
        if not os.path.isfile(schema_path):
            errors.append(f"{name}: {kn(r)}: no Kubernetes schema for {r.get('apiVersion')} and no schemas/{kind.lower()}.schema.json")
            continue
        with open(schema_path) as f:
            schema = json.load(f)
        for e in jsonschema.Draft202012Validator(schema).iter_errors(r):
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{name}: {kn(r)} (schemas/{kind.lower()}.schema.json): {path}: {e.message}")
        checked += 1
        files_seen.add(name)
    for name in files_seen:
        if name != "kustomization.yaml" and name not in listed and name not in APPLIED_SEPARATELY:
            errors.append(f"{name}: not listed in kustomization.yaml (nor in APPLIED_SEPARATELY here)")
    errors += check_references(kust, listed, resources)
    for e in errors:
        print(f"ERROR {e}")
    if errors:
        return 1
    print(f"OK {checked} resources in {len(files_seen)} files: schemas of Kubernetes "
          f"{' and '.join(versions)} (kubernetes-validate {kubernetes_validate.version.__version__}, strict), "
          f"CRD kinds against schemas/, references between resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
