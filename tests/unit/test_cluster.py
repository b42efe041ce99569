"""The container image, compose file and Kubernetes manifests, checked offline.

The manifests are rendered with `kubectl kustomize` when kubectl is installed, and always by
the small renderer here (resources, labels, images, strategic-merge patches: what
deploy/k8s uses), whose output is compared with kubectl's. Every hpo command line in them is
parsed against hpo's own CLI, so a renamed option fails here, not in a cluster; so are the
`docker compose` and `kubectl exec` command lines of docs/scale-out.md and the pool's `hpo`
commands in it.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess

import pytest
import typer
import yaml
from conftest import REPO
from sqlalchemy.engine import make_url

from hpo.cli import app

K8S = REPO / "deploy" / "k8s"
COMPONENT = "app.kubernetes.io/component"  # kubectl apply -k … -l COMPONENT!=study (or !=pool)


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


def test_the_pool_runs_hpo_worker_with_the_jobs_database_data_and_resources(rendered, monkeypatch):
    """The pool's Deployment: `hpo worker`, one trial per pod, and everything else the Job's
    workers have (the Secret's URL, the data folder, the resources and, on GPUs, the GPU)."""
    variant, docs = rendered
    pool = one(docs, "Deployment", "hpo-pool")
    assert pool["spec"]["replicas"] >= 1
    template = pool["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = template["spec"]
    assert pod.get("restartPolicy", "Always") == "Always"  # a Deployment's only choice
    job = one(docs, "Job", "hpo-worker")
    job_pod = job["spec"]["template"]["spec"]
    # Their pods are told apart (kubectl get pods -l app=…, kubectl logs -l app=…).
    assert labels["app"] != job["spec"]["template"]["metadata"]["labels"]["app"]
    # Stopped, a pool worker ends its epoch first: at least the Job's time for that.
    assert pod["terminationGracePeriodSeconds"] >= job_pod["terminationGracePeriodSeconds"]
    assert pod["initContainers"] == job_pod["initContainers"]  # waits for the database
    assert pod["volumes"] == job_pod["volumes"]
    assert pod.get("tolerations") == job_pod.get("tolerations")
    [worker] = pod["containers"]
    [job_worker] = job_pod["containers"]
    assert worker["image"] == job_worker["image"]
    assert worker["image"] == ("hpo:gpu" if variant == "gpu" else "hpo:latest")
    assert env_from_secret(worker, "HPO_STORAGE") == ("hpo-db", "HPO_STORAGE")
    env = {item["name"]: item for item in worker["env"]}
    for item in job_worker["env"]:
        assert env[item["name"]] == item, item["name"]  # the Secret's URL, HPO_DATA_DIR
    assert worker["volumeMounts"] == job_worker["volumeMounts"]
    assert worker["resources"] == job_worker["resources"]  # one GPU each on the GPU variant
    if variant == "gpu":
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        # A rollout must not need a GPU more than the pool holds.
        assert pool["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    # The command, parsed by hpo's CLI with the pod's environment, as the pod would run it.
    for name, item in env.items():
        if "value" in item:
            monkeypatch.setenv(name, item["value"])
    parsed = hpo_args(worker["args"])
    assert parsed["command"] == "worker"
    assert parsed["slots"] == "1"  # one trial per pod: replicas count trials, requests fit
    assert parsed["data_dir"] == "/data" == worker["volumeMounts"][0]["mountPath"]
    # A database pod rescheduled is waited for as long as the Job's workers wait.
    assert parsed["reconnect"] == hpo_args(job_worker["args"])["reconnect"]


def test_gpu_pool_runs_the_same_command_as_the_cpu_one():
    base, gpu = (one(render(K8S / v), "Deployment", "hpo-pool") for v in ("base", "gpu"))
    pods = [d["spec"]["template"]["spec"]["containers"][0] for d in (base, gpu)]
    assert pods[0]["args"] == pods[1]["args"] and pods[0]["env"] == pods[1]["env"]


def select(docs: list[dict], selector: str) -> set[tuple[str, str]]:
    """What `kubectl apply -k … -l KEY!=VALUE` applies: the objects without that label value."""
    key, _, value = selector.partition("!=")
    return {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"].get("labels", {}).get(key) != value
    }


def test_either_kind_of_workers_can_be_left_out_with_a_label_selector(rendered):
    _, docs = rendered
    everything = {(d["kind"], d["metadata"]["name"]) for d in docs}
    job, pool = ("Job", "hpo-worker"), ("Deployment", "hpo-pool")
    assert select(docs, f"{COMPONENT}!=study") == everything - {job}
    assert select(docs, f"{COMPONENT}!=pool") == everything - {pool}
    for folder, selector in re.findall(r"kubectl apply -k (\S+) -l (\S+)", apply_texts()):
        assert folder == "…" or (REPO / folder / "kustomization.yaml").exists(), folder
        assert selector in (f"{COMPONENT}!=study", f"{COMPONENT}!=pool"), selector


def apply_texts() -> str:
    """Where the manifests say how to apply them: docs/scale-out.md and their own comments."""
    files = [REPO / "docs" / "scale-out.md", *sorted(K8S.rglob("*.yaml"))]
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def test_the_optional_autoscaler_scales_the_pool_on_cpu_alone():
    """deploy/k8s/optional/pool-hpa.yaml: no metrics adapter, only metrics-server's CPU use,
    which is relative to the pods' CPU request."""
    hpa = yaml.safe_load((K8S / "optional" / "pool-hpa.yaml").read_text())
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    target = hpa["spec"]["scaleTargetRef"]
    docs = render(K8S / "base")
    pool = one(docs, target["kind"], target["name"])
    assert target["apiVersion"] == pool["apiVersion"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    [worker] = pool["spec"]["template"]["spec"]["containers"]
    assert worker["resources"]["requests"]["cpu"]
    # Not applied with the kustomizations: it is an option.
    for variant in ("base", "gpu"):
        assert "HorizontalPodAutoscaler" not in {d["kind"] for d in render(K8S / variant)}


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
            assert real["spec"].get("replicas") == mine["spec"].get("replicas")
            assert real["spec"].get("strategy") == mine["spec"].get("strategy")
        labels = [one(d, kind, name)["metadata"].get("labels") for d in (theirs, ours)]
        assert labels[0] == labels[1], (kind, name)  # what kubectl apply -l selects on


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
    # analyze's trial ensemble is chosen from, on a named volume the image lets hpo write.
    for service in ("worker", "dashboard"):
        store = services[service]["environment"]["HPO_ARTIFACTS"]
        assert f"artifacts:{store}" in services[service]["volumes"]
    assert "artifacts" in compose["volumes"]
    assert "chown hpo /artifacts" in (REPO / "Dockerfile").read_text()


def seconds(duration: str) -> float:
    """Compose's durations: 2m, 90s, 1m30s, 1h."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_runs_a_pool_by_default_and_one_study_behind_a_profile():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    env = {"POSTGRES_PASSWORD": "pw"}
    # `docker compose up` starts what has no profile: the database, the dashboard, the pool.
    assert {name for name, s in services.items() if not s.get("profiles")} == {
        "db",
        "dashboard",
        "pool",
    }
    assert services["worker"]["profiles"] == ["study"]  # docker compose --profile study up
    pool, worker = services["pool"], services["worker"]
    parsed = hpo_args([interpolate(str(a), env) for a in pool["command"]])
    assert parsed["command"] == "worker"
    assert parsed["slots"] == "1"  # by default; more containers: --scale pool=N
    # The same database, data folder and artifact store as the workers on one study: what
    # `docker compose run --rm pool submit …` uploads, the pool's workers read.
    assert pool["environment"] == worker["environment"]
    assert pool["volumes"] == worker["volumes"]
    store = pool["environment"]["HPO_ARTIFACTS"]
    assert f"artifacts:{store}" in pool["volumes"]
    assert pool["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert pool["image"] == worker["image"]
    # It never exits by itself: restarted after an error, not after `docker compose stop`.
    assert pool["restart"] == "unless-stopped"
    # Stopped, it ends its epoch first (the image's STOPSIGNAL, SIGINT: exit 130).
    assert "stop_signal" not in pool
    assert seconds(pool["stop_grace_period"]) >= seconds(worker["stop_grace_period"]) >= 60
    assert "deploy" not in pool and "scale" not in pool  # the count is --scale pool=N
    assert "ports" not in pool
    for service in services.values():  # nothing published beyond this machine
        for port in service.get("ports", []):
            assert interpolate(port, env).startswith("127.0.0.1:")
    example = (REPO / ".env.example").read_text()
    for name in re.findall(r"\$\{(\w+)", " ".join(pool["command"])):  # each one documented
        assert f"\n{name}=" in example, name


def doc_compose_commands() -> list[list[str]]:
    """Each `docker compose …` that docs/scale-out.md and compose.yaml's comments give, as
    its words (without those that elide their arguments with …)."""
    texts = [(REPO / "docs" / "scale-out.md").read_text(encoding="utf-8")]
    texts.append((REPO / "compose.yaml").read_text(encoding="utf-8"))
    found = []
    for text in texts:
        for line in text.splitlines():
            for match in re.finditer(r"docker compose [^`\n]*", line):
                command = re.split(r"\s#", match.group(0))[0].strip().rstrip(".,;:)")
                if "…" not in command:
                    found.append(shlex.split(command))
    return found


def test_the_documented_compose_commands_name_real_services_and_hpo_commands():
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    commands = doc_compose_commands()
    verbs = {words[2:][0] for words in commands if words[2:] and not words[2].startswith("-")}
    assert {"up", "run", "exec"} <= verbs
    hpo_commands = set()
    for words in commands:
        words = words[2:]
        active = set()
        while words and words[0] == "--profile":
            active.add(words[1])
            words = words[2:]
        assert active <= profiles, active
        if not words:
            continue
        verb, rest = words[0], words[1:]
        scaled = [m.group(1) for w in rest if (m := re.match(r"(\w+)=(?:\d+|N)$", w))]
        for name in scaled:  # --scale NAME=N: a service that this command starts
            assert name in services, name
            needs = services[name].get("profiles")
            assert not needs or set(needs) & active, f"--scale {name} needs --profile {needs}"
        if verb in ("run", "exec"):
            while rest and rest[0].startswith("-"):  # --rm, -v SRC:DST, -e X=Y
                rest = rest[2:] if rest[0] in ("-v", "--volume", "-e", "--env") else rest[1:]
            if not rest:  # prose: "submit those with `docker compose run`"
                continue
            service, argv = rest[0], rest[1:]
            assert service in services, service
            if verb == "exec":  # a command in the running container, no entry point
                assert argv[0] == "hpo", argv
                argv = argv[1:]
            if argv:  # run: the image's entry point is hpo
                hpo_commands.add(hpo_args(argv)["command"])
    assert {"submit", "list"} <= hpo_commands


def pool_hpo_calls(page) -> list[list[str]]:
    """The pool's hpo command lines in a page's code blocks (continuation lines joined)."""
    text = page.read_text(encoding="utf-8")
    calls = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            pool_command = r"(?:kubectl exec deploy/\S+ -- )?hpo (worker|submit|list|stop|resume)\b"
            if re.match(pool_command, line) and "…" not in line:
                calls.append(shlex.split(line[line.index("hpo ") :])[1:])
    return calls


@pytest.mark.parametrize("page", ["scale-out.md"])
def test_the_pools_documented_commands_parse(page):
    calls = pool_hpo_calls(REPO / "docs" / page)
    assert {"worker", "submit", "list", "stop", "resume"} <= {c[0] for c in calls}
    for argv in calls:
        assert hpo_args(argv)["command"] == argv[0]
    for name in re.findall(r"kubectl exec deploy/([\w-]+)", (REPO / "docs" / page).read_text()):
        assert one(render(K8S / "base"), "Deployment", name)


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
