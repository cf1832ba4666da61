"""Checks the deployment files (run by tests/deploy.rs with the test venv's Python).

- docker/k8s/*.yaml: every resource against the Kubernetes JSON schemas (`kubernetes-validate`,
  strict: unknown fields are errors), then what genrep needs of them: readiness on /ready,
  liveness on /health, a termination grace period longer than the drain timeout, a GPU request.
- docker/compose.yaml: a stop grace period longer than the drain timeout, healthchecks, and a load
  balancer that starts only once the replicas are healthy.
- docker/Dockerfile*: a locked build, a non-root user and a HEALTHCHECK.
Prints one line per check; exits non-zero on the first list of failures."""

import glob
import os
import re
import sys

import yaml
from kubernetes_validate import utils as kv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def seconds(v):
    m = re.fullmatch(r"(\d+)(s|m)?", str(v))
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


manifests = sorted(glob.glob(os.path.join(ROOT, "docker/k8s/*.yaml")))
check(len(manifests) > 0, "docker/k8s has manifests")
kinds = {}
for path in manifests:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            name = f"{os.path.relpath(path, ROOT)}: {doc['kind']}/{doc['metadata']['name']}"
            try:
                kv.validate(doc, kv.latest_version(), strict=True)
                check(True, f"{name} validates (Kubernetes {kv.latest_version()}, strict)")
            except kv.ValidationError as e:
                check(False, f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
            kinds[doc["kind"]] = doc

for kind in ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]:
    check(kind in kinds, f"a {kind}")
dep = kinds.get("Deployment")
if dep:
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    drain = int(env.get("GENREP_DRAIN_TIMEOUT_S", 30))
    check(pod.get("terminationGracePeriodSeconds", 30) > drain,
          f"terminationGracePeriodSeconds > drain timeout ({drain} s)")
    check(c["readinessProbe"]["httpGet"]["path"] == "/ready", "readiness probe on /ready")
    check(c["livenessProbe"]["httpGet"]["path"] == "/health", "liveness probe on /health")
    check("nvidia.com/gpu" in c["resources"]["limits"], "a GPU resource limit")
    check(any(v.get("persistentVolumeClaim") for v in pod.get("volumes", [])), "a model volume")
hpa = kinds.get("HorizontalPodAutoscaler")
if hpa:
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    check("genrep_queue_depth" in names, "the autoscaler follows genrep_queue_depth")

with open(os.path.join(ROOT, "docker/compose.yaml")) as f:
    compose = yaml.safe_load(f)
services = compose["services"]
replicas = [s for n, s in services.items() if n.startswith("genrep")]
check(len(replicas) >= 2, "compose: two or more replicas")
for s in replicas:
    drain = int(s.get("environment", {}).get("GENREP_DRAIN_TIMEOUT_S", 30))
    check(seconds(s.get("stop_grace_period", "10s")) > drain,
          f"compose: stop_grace_period > drain timeout ({drain} s)")
    check("healthcheck" in s and "image" in s and s.get("volumes"),
          "compose: replica has an image tag, a healthcheck and a model volume")
deps = services["lb"].get("depends_on", {})
check(isinstance(deps, dict) and all(d.get("condition") == "service_healthy" for d in deps.values()),
      "compose: the load balancer waits for healthy replicas")

for path in sorted(glob.glob(os.path.join(ROOT, "docker/Dockerfile*"))):
    text = open(path).read()
    rel = os.path.relpath(path, ROOT)
    check("--locked" in text, f"{rel}: cargo build --locked")
    check(re.search(r"^USER (?!root)", text, re.M) is not None, f"{rel}: runs as a non-root user")
    check("HEALTHCHECK" in text, f"{rel}: HEALTHCHECK")
check(os.path.exists(os.path.join(ROOT, ".dockerignore")), ".dockerignore")

if failures:
    print(f"{len(failures)} deployment check(s) failed", file=sys.stderr)
    sys.exit(1)
