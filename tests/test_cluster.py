"""The container image, compose file and Kubernetes manifests, checked offline.

The manifests are rendered with `kubectl kustomize` when kubectl is installed, and always by
the small renderer here (resources, labels, images, strategic-merge patches: what
deploy/k8s uses), whose output is compared with kubectl's. Every hpo command line in them is
parsed against hpo's own CLI, so a renamed option fails here, not in a cluster.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess

import pytest
import typer
import yaml
from conftest import REPO
from sqlalchemy.engine import make_url

from hpo.cli import app

K8S = REPO / "deploy" / "k8s"


# --- rendering -----------------------------------------------------------------------------


def _merge(base, patch):
    """Strategic merge as kustomize applies it to these manifests: maps merge, lists of named
    items (containers, env) merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(i, dict) and "name" in i for i in base + patch):
        out = [copy.deepcopy(i) for i in base]
        names = [i["name"] for i in out]
        for item in patch:
            if item["name"] in names:
                index = names.index(item["name"])
                out[index] = _merge(out[index], item)
            else:
                out.insert(0, copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def render(folder) -> list[dict]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for label in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    for patch in kustomization.get("patches", []):
        change = yaml.safe_load((folder / patch["path"]).read_text())
        for i, doc in enumerate(docs):
            if (doc["kind"], doc["metadata"]["name"]) == (
                change["kind"],
                change["metadata"]["name"],
            ):
                docs[i] = _merge(doc, change)
    for image in kustomization.get("images", []):
        for container in containers(docs):
            name, _, _ = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return docs


def containers(docs: list[dict], kind: str | None = None) -> list[dict]:
    found = []
    for doc in docs:
        if kind is None or doc["kind"] == kind:
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            found += spec.get("containers", []) + spec.get("initContainers", [])
    return found


def one(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def hpo_args(argv: list[str]) -> dict[str, object]:
    """Parse an hpo command line with hpo's own CLI: its command and option values."""
    group = typer.main.get_command(app)
    parent = group.make_context("hpo", list(argv))
    name, command, rest = group.resolve_command(parent, list(argv))
    return {"command": name, **command.make_context(name, rest, parent=parent).params}


def env_from_secret(container: dict, name: str) -> tuple[str, str] | None:
    for item in container.get("env", []):
        if item["name"] == name and "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            return ref["name"], ref["key"]
    return None


@pytest.fixture(params=["base", "gpu"])
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / request.param)


# --- Kubernetes ----------------------------------------------------------------------------


def test_workers_run_hpo_optimize_on_the_secrets_url(rendered):
    variant, docs = rendered
    secret = one(docs, "Secret", "hpo-db")["stringData"]
    url = make_url(secret["HPO_STORAGE"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.database) == (
        secret["POSTGRES_USER"],
        secret["POSTGRES_PASSWORD"],
        secret["POSTGRES_DB"],
    )
    service = one(docs, "Service", url.host)  # the URL names the database's Service
    assert service["spec"]["ports"][0]["port"] == (url.port or 5432)
    db = one(docs, "StatefulSet", "postgres")
    assert (
        service["spec"]["selector"].items() <= db["spec"]["template"]["metadata"]["labels"].items()
    )

    job = one(docs, "Job", "hpo-worker")
    assert job["spec"]["parallelism"] >= 1 and "completions" not in job["spec"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    [worker] = job["spec"]["template"]["spec"]["containers"]
    assert worker["image"] == ("hpo:gpu" if variant == "gpu" else "hpo:latest")
    assert env_from_secret(worker, "HPO_STORAGE") == ("hpo-db", "HPO_STORAGE")
    parsed = hpo_args(worker["args"])
    assert parsed["command"] == "optimize" and parsed["study"] and parsed["trials"] >= 1
    assert parsed["heartbeat"] >= 1 and parsed["reconnect"] > 0
    limits = worker["resources"].get("limits", {})
    assert ("nvidia.com/gpu" in limits) == (variant == "gpu")
    if variant == "gpu":
        assert limits["nvidia.com/gpu"] == 1


def test_gpu_workers_run_the_same_study_as_the_cpu_ones():
    base, gpu = (one(render(K8S / v), "Job", "hpo-worker") for v in ("base", "gpu"))
    args = [j["spec"]["template"]["spec"]["containers"][0]["args"] for j in (base, gpu)]
    assert args[0] == args[1]


def test_database_keeps_its_data_on_a_volume(rendered):
    _, docs = rendered
    db = one(docs, "StatefulSet", "postgres")
    [claim] = db["spec"]["volumeClaimTemplates"]
    [container] = db["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/postgresql/data"
    env = {e["name"]: e for e in container["env"]}
    assert env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    for key in ("POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"):
        assert env_from_secret(container, key) == ("hpo-db", key)


def test_dashboard_reads_the_same_database(rendered):
    _, docs = rendered
    deployment = one(docs, "Deployment", "hpo-dashboard")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    parsed = hpo_args(container["args"])
    assert parsed["command"] == "dashboard"
    assert env_from_secret(container, "HPO_STORAGE") == ("hpo-db", "HPO_STORAGE")
    service = one(docs, "Service", "hpo-dashboard")
    assert service["spec"]["type"] == "ClusterIP"  # reached by port-forward, not exposed
    assert service["spec"]["ports"][0]["targetPort"] == parsed["port"]


@pytest.mark.parametrize("variant", ["base", "gpu"])
def test_kubectl_renders_what_the_tests_check(variant):
    """kubectl's own kustomize (when installed) renders the manifests, to the same workers."""
    kubectl = shutil.which("kubectl")
    ours = render(K8S / variant)
    if kubectl is None:  # the checks above still ran on our rendering
        assert ours
        return
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / variant)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    theirs = [d for d in yaml.safe_load_all(out) if d]
    key = sorted((d["kind"], d["metadata"]["name"]) for d in theirs)
    assert key == sorted((d["kind"], d["metadata"]["name"]) for d in ours)
    for kind, name in key:
        if kind in ("Job", "Deployment", "StatefulSet"):
            mine, real = one(ours, kind, name), one(theirs, kind, name)
            assert containers([real]) == containers([mine]), (kind, name)
            assert real["spec"].get("parallelism") == mine["spec"].get("parallelism")


# --- compose -------------------------------------------------------------------------------


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, from `env`."""

    def one_var(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name}: {arg}")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one_var, value)


def test_compose_runs_workers_and_a_local_dashboard_on_one_database():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    env = {"POSTGRES_PASSWORD": "pw"}
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(services["db"]["environment"]["POSTGRES_PASSWORD"], {})
    url = make_url(interpolate(services["worker"]["environment"]["HPO_STORAGE"], env))
    db_env = {k: interpolate(v, env) for k, v in services["db"]["environment"].items()}
    assert (url.host, url.username, url.password, url.database) == (
        "db",
        db_env["POSTGRES_USER"],
        db_env["POSTGRES_PASSWORD"],
        db_env["POSTGRES_DB"],
    )
    worker = hpo_args([interpolate(str(a), env) for a in services["worker"]["command"]])
    assert worker["command"] == "optimize" and worker["study"] and worker["trials"] >= 1
    assert "deploy" not in services["worker"]  # the count is --scale worker=N
    dashboard = services["dashboard"]
    assert hpo_args(dashboard["command"])["command"] == "dashboard"
    assert (
        dashboard["environment"]["HPO_STORAGE"] == services["worker"]["environment"]["HPO_STORAGE"]
    )
    for port in dashboard["ports"]:
        assert interpolate(port, env).startswith("127.0.0.1:")  # this machine only
    [volume] = services["db"]["volumes"]
    assert volume.split(":")[0] in compose["volumes"]  # a named volume, not the container
    # One artifact store for the workers and the dashboard: the trials' predictions that
    # analyze's ensemble of trials is chosen from, on a named volume the image lets hpo write.
    for service in ("worker", "dashboard"):
        store = services[service]["environment"]["HPO_ARTIFACTS"]
        assert f"artifacts:{store}" in services[service]["volumes"]
    assert "artifacts" in compose["volumes"]
    assert "chown hpo /artifacts" in (REPO / "Dockerfile").read_text()


def test_the_password_file_is_not_committed():
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".env" in ignored
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["POSTGRES_PASSWORD"] == ""  # no default password to forget to change


# --- the image -----------------------------------------------------------------------------


def test_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    base = next(line for line in lines if line.startswith("FROM "))
    assert base.endswith("-slim")
    assert 'ENTRYPOINT ["hpo"]' in lines
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0")
    assert '".[postgres,mysql]"' in text  # both database drivers
    assert re.search(r'pip install "jax\[\$GPU\]"', text)  # the GPU build argument
    assert "STOPSIGNAL SIGINT" in lines  # docker stop: hpo ends the epoch, saves, exits
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
                assert f"!{source.rstrip('/')}/" in ignored or f"!{source}" in ignored, source
