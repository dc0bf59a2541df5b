"""The cluster configs in cluster/: Ray's own launcher schema, KubeRay's required fields, the
privacy and authentication rules, the pinned versions, and room for the paper's sweep.

The launcher config is checked against ``ray/autoscaler/ray-schema.json`` shipped in the
installed ray package (JSON Schema draft-07); a test shows that check failing on a misspelt key.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from cryotune.cli import build_parser
from cryotune.sweep.resources import fit_resources
from cryotune.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
KUBERAY = CLUSTER / "kuberay"
VERSION = version("cryotune")
WHEEL = f"cryotune-{VERSION}-py3-none-any.whl"
IMAGE_TAG = f"cryotune:{VERSION}"
LABEL = {"app.kubernetes.io/name": "cryotune"}
FIG5 = "search_spaces/paper-fig5-robustness.yaml"


def ray_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def kuberay_docs() -> list[dict]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest(kind: str) -> dict:
    (doc,) = [d for d in kuberay_docs() if d["kind"] == kind]
    return doc


def pod_templates(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"]["template"],
            *(group["template"] for group in cluster_spec["workerGroupSpecs"])]


def containers(template: dict) -> list[dict]:
    return [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]


# -- the launcher config ------------------------------------------------------------------------

def test_the_launcher_config_matches_rays_schema():
    schema = ray_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(launcher())


@pytest.mark.parametrize("path, key, value, message", [
    ((), "head_setup_comands", [], "Additional properties are not allowed ('head_setup_comands'"),
    (("available_node_types", "gpu_worker"), "max_worker", 8, "('max_worker' was unexpected)"),
    (("available_node_types", "gpu_worker"), "min_workers", "2", "'2' is not of type 'integer'"),
    (("docker",), "worker_imag", "x", "('worker_imag' was unexpected)"),
])
def test_the_schema_check_catches_a_misspelt_key_or_a_wrong_type(path, key, value, message):
    config = copy.deepcopy(launcher())
    target = config
    for part in path:
        target = target[part]
    target[key] = value
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.Draft7Validator(ray_schema()).validate(config)
    assert message in str(err.value)


def test_the_launcher_keeps_ray_private_and_authenticated():
    config = launcher()
    text = yaml.safe_dump(config)  # the settings, not the comments
    assert "0.0.0.0" not in text
    assert config["provider"]["use_internal_ips"] is True
    for name, node in config["available_node_types"].items():
        # without SecurityGroupIds Ray creates a group with SSH open to 0.0.0.0/0
        assert node["node_config"]["SecurityGroupIds"], name
        assert node["node_config"]["SubnetIds"], name
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start.split()
    assert "--head" in head_start.split()
    for start in [head_start, *config["worker_start_ray_commands"]]:
        if "ray start" in start:
            assert "RAY_AUTH_MODE=token" in start
            assert "RAY_AUTH_TOKEN_PATH=$HOME/.cryotune/ray-auth-token" in start
    # the token itself is never in the config: it is fetched into a file only its owner reads
    assert not re.search(r"RAY_AUTH_TOKEN=", text)
    (fetch,) = [c for c in config["setup_commands"] if "secretsmanager" in c]
    assert fetch.lstrip("(").startswith("umask 077 &&")
    assert "> ~/.cryotune/ray-auth-token.tmp" in fetch


def test_the_launcher_installs_this_cryotune_and_this_ray():
    config = launcher()
    installs = [c for c in config["setup_commands"] if "pip install" in c]
    assert any(f"~/cryotune-dist/{WHEEL}" in c.split() for c in installs), installs
    assert config["file_mounts"]["~/cryotune-dist"] == "./dist"
    assert (REPO / config["file_mounts"]["~/search_spaces"] / Path(FIG5).name).exists()
    for key in ("head_image", "worker_image"):
        assert config["docker"][key].startswith(f"rayproject/ray:{ray.__version__}-"), key
    assert config["docker"]["worker_image"].endswith("-gpu")


# -- the KubeRay manifests ----------------------------------------------------------------------

def test_the_raycluster_has_the_required_fields_and_a_gpu_worker_group():
    cluster = manifest("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"]
    check_cluster_spec(cluster["spec"])


def check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token", "secretName": "cryotune-ray-auth"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"]
    groups = spec["workerGroupSpecs"]
    assert groups and all(g["groupName"] for g in groups)
    gpus = [c["resources"] for g in groups for c in containers(g["template"])
            if "nvidia.com/gpu" in c["resources"].get("limits", {})]
    assert gpus, "no worker group asks for nvidia.com/gpu"
    for resources in gpus:
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for template in pod_templates(spec):
        for container in containers(template):
            assert container["image"].endswith(IMAGE_TAG), container["image"]


def test_the_rayjob_runs_the_fig5_sweep_with_storage_on_s3():
    job = manifest("RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "cryotune"
    args = build_parser().parse_args(argv[1:])  # the CLI's own parser
    assert args.command == "sweep" and args.space == FIG5 and args.storage.startswith("s3://")
    load_spec(REPO / args.space)  # a valid spec, in the image under the head's working dir
    assert spec["rayClusterSpec"] == manifest("RayCluster")["spec"]
    check_cluster_spec(spec["rayClusterSpec"])
    assert spec["shutdownAfterJobFinishes"] is True
    (submitter,) = containers(spec["submitterPodTemplate"])
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": spec["rayClusterSpec"]["authOptions"]["secretName"],
                      "key": "auth_token"}


def test_nothing_in_kubernetes_is_exposed_publicly_and_no_token_is_committed():
    docs = kuberay_docs()
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Ingress", "Gateway", "HTTPRoute", "Route", "Secret"}
    for doc in docs:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
    cluster_specs = [manifest("RayCluster")["spec"], manifest("RayJob")["spec"]["rayClusterSpec"]]
    templates = [t for spec in cluster_specs for t in pod_templates(spec)]
    templates.append(manifest("RayJob")["spec"]["submitterPodTemplate"])
    for spec in cluster_specs:
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
        assert not spec["headGroupSpec"].get("enableIngress", False)
    for template in templates:
        assert not template["spec"].get("hostNetwork", False)
        assert all("hostPort" not in p for c in containers(template) for p in c.get("ports", []))
        assert template["metadata"]["labels"] == LABEL
    # every Ray pod is behind the policy: ingress from its own pods, the operator on 8265 only
    policy = manifest("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == LABEL
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    own, operator = policy["spec"]["ingress"]
    assert own["from"] == [{"podSelector": {"matchLabels": LABEL}}] and "ports" not in own
    assert operator["ports"] == [{"protocol": "TCP", "port": 8265}]
    volumes = {v["persistentVolumeClaim"]["claimName"] for t in templates
               for v in t["spec"].get("volumes", [])}
    assert volumes == {manifest("PersistentVolumeClaim")["metadata"]["name"]}
    assert manifest("PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_image_installs_this_cryotune_on_this_ray():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in text
    assert f"dist/{WHEEL}" in text and f"/tmp/{WHEEL}" in text
    assert "COPY --chown=ray:users search_spaces /home/ray/search_spaces" in text
    assert "WORKDIR /home/ray" in text


# -- room for the paper's sweep -----------------------------------------------------------------

def _launcher_workers() -> tuple[int, float, float]:
    node = launcher()["available_node_types"]["gpu_worker"]
    return node["min_workers"], node["resources"]["CPU"], node["resources"]["GPU"]


def _kuberay_workers() -> tuple[int, float, float]:
    (group,) = manifest("RayCluster")["spec"]["workerGroupSpecs"]
    (container,) = containers(group["template"])
    limits = container["resources"]["limits"]
    return group["minReplicas"], float(limits["cpu"]), float(limits["nvidia.com/gpu"])


@pytest.mark.parametrize("workers", [_launcher_workers, _kuberay_workers],
                         ids=["launcher", "kuberay"])
def test_the_fig5_trials_fit_the_gpu_nodes_and_leave_ray_data_a_whole_cpu(workers):
    n, cpus, gpus = workers()
    spec = load_spec(REPO / FIG5)
    fit = fit_resources(spec, [0] + [cpus] * n, [0] + [gpus] * n)  # a head with no CPUs
    assert fit.gpu == spec.resources.gpu > 0 and not fit.adjusted and fit.nodes == n
    # whole trial CPUs: a 1-CPU Ray Data task cannot use half CPUs left on two nodes
    assert fit.cpu == int(fit.cpu) >= 1
    per_node = min(math.floor(cpus / fit.cpu), math.floor(gpus / fit.gpu + 1e-9))
    assert per_node >= 1 and fit.concurrent >= n
    assert n * cpus - fit.concurrent * fit.cpu >= 1
