"""Offline checks of the cluster launcher configs (cluster/*.yaml): Ray's schema and our rules.

No network and no cluster: `prepare_config` merges the provider defaults shipped inside the Ray
wheel (as `ray up` does first) and `validate_config` checks the result against
ray/autoscaler/ray-schema.json. The rest asserts what the schema cannot: the image matches the
installed Ray, the dashboard stays on the head's loopback, no credentials, truthful GPU counts.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"aws": ROOT / "cluster" / "gpu.yaml", "gcp": ROOT / "cluster" / "gcp-gpu.yaml"}
STORAGE = {"aws": "s3://YOUR-BUCKET/adr-scale", "gcp": "gs://YOUR-BUCKET/adr-scale"}
PLACEHOLDERS = {  # what a user fills in (docs/cluster.md); the repository never holds real names
    "aws": ("YOUR-BUCKET", "fs-YOUR-EFS-ID", "ami-YOUR-DLAMI-ID", "YOUR-ORG", "sg-YOUR-SG-ID",
            "subnet-YOUR-P5-SUBNET-ID"),
    "gcp": ("YOUR-BUCKET", "YOUR-GCP-PROJECT", "YOUR-FILESTORE-IP", "YOUR-DLVM-FAMILY", "YOUR-ORG"),
}
RAY_PORTS = (6379, 8265, 10001)  # GCS, dashboard / job API, Ray client

# What each machine type really has: a node type must declare exactly these GPUs, and the
# accelerator_type label Ray's NVIDIA detection gives that GPU (ray.util.accelerators), if any.
MACHINES = {
    "g5.xlarge": (1, "A10G"), "g6.xlarge": (1, "L4"), "g6e.xlarge": (1, "L40S"),
    "p4d.24xlarge": (8, "A100"), "p5.48xlarge": (8, "H100"), "g6e.48xlarge": (8, "L40S"),
    "g2-standard-8": (1, "L4"), "a2-highgpu-1g": (1, "A100"), "a3-highgpu-8g": (8, "H100"),
}
# EFA devices (= network cards) per AWS instance type (EC2's EFA docs: P5 has 32 network cards,
# 3200 Gbps; p4d 4): an EFA node type attaches one EFA interface per card.
EFA_CARDS = {"p5.48xlarge": 32, "p4d.24xlarge": 4}
SG = "sg-YOUR-SG-ID"

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]*[0-9])(?=[A-Za-z0-9/+]*[a-z])"
                                 r"(?=[A-Za-z0-9/+]*[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
    "credential key name": re.compile(r"aws_secret_access_key|aws_access_key_id|aws_session_token|"
                                      r"secret_key|private_key|gcp_credentials|password|api_key",
                                      re.IGNORECASE),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "ssh key path": re.compile(r"ssh_private_key|KeyName", re.IGNORECASE),
}


def _load(provider: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    text = CONFIGS[provider].read_text()
    raw = yaml.safe_load(text)
    return text, raw, prepare_config(copy.deepcopy(raw))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def cluster(request) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    return (request.param, *_load(request.param))


def _workers(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in cfg["available_node_types"].items()
            if name != cfg["head_node_type"]}


def _machine(node_type: dict[str, Any]) -> str:
    conf = node_type["node_config"]
    return conf.get("InstanceType") or conf["machineType"]


def test_valid_against_rays_own_schema(cluster):
    _, _, _, prepared = cluster
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError on a bad config


def test_schema_check_is_live():
    """The validation above would catch a typo: an unknown key is rejected."""
    _, raw, _ = _load("aws")
    raw["available_node_types"]["gpu1"]["max_worker"] = 8
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(raw))


def test_image_is_ray_gpu_build_of_the_installed_ray(cluster):
    provider, _, raw, prepared = cluster
    docker = prepared["docker"]
    assert not {"head_image", "worker_image"} & docker.keys(), "one image for every node"
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d+)-(gpu|cu\d+)", docker["image"])
    assert m, f"{provider}: {docker['image']!r} is not a rayproject/ray GPU tag"
    assert m.group(1) == ray.__version__ and m.group(1).startswith("2.60."), (
        f"{provider}: image Ray {m.group(1)} != installed Ray {ray.__version__}")
    assert m.group(2) == "311"
    pins = re.findall(r"ray\[[a-z,]+\]==([\d.]+)", " ".join(raw["setup_commands"]))
    assert pins == [m.group(1)], "setup_commands must pin ray to the image's version"


def test_setup_installs_adr_scale(cluster):
    _, _, raw, _ = cluster
    setup = " ".join(raw["setup_commands"])
    assert re.search(r"pip install .*adr-scale @ git\+https://|pip install .*adr_scale-.*\.whl", setup)


def test_dashboard_only_on_the_heads_loopback(cluster):
    provider, text, _, prepared = cluster
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    # Ray's provider defaults start the head with --dashboard-host=0.0.0.0: nothing of it may
    # survive the merge, and the file itself never names 0.0.0.0.
    assert "0.0.0.0" not in json.dumps(prepared), f"{provider}: 0.0.0.0 in the prepared config"
    assert "0.0.0.0" not in text


def test_no_inbound_rule_opens_ray_ports(cluster):
    provider, _, _, prepared = cluster
    rules = prepared["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        everything = str(rule.get("IpProtocol")) == "-1"
        low, high = rule.get("FromPort", 0), rule.get("ToPort", 65535)
        opened = [p for p in RAY_PORTS if everything or low <= p <= high]
        assert not opened, f"security_group rule {rule} opens {opened}"
    if provider == "gcp":
        for name, node_type in prepared["available_node_types"].items():
            assert "SecurityGroupIds" not in node_type["node_config"], name


def _security_groups(node_config: dict[str, Any]) -> set[str]:
    groups = set(node_config.get("SecurityGroupIds", []))
    for interface in node_config.get("NetworkInterfaces", []):
        groups |= set(interface.get("Groups", []))
    return groups


def test_aws_nodes_share_one_security_group_whose_rules_the_guide_gives():
    """EFA interfaces must name their group (Ray then creates none), and nodes in different
    groups could not reach each other: every node type names the same placeholder group, and
    the guide creates it with self-referencing rules (EFA's requirement, the nodes' Ray traffic)
    and SSH from one address only, so no Ray port is open to the outside."""
    _, _, prepared = _load("aws")
    for name, node_type in prepared["available_node_types"].items():
        assert _security_groups(node_type["node_config"]) == {SG}, name
    guide = (ROOT / "docs" / "cluster.md").read_text().replace("\\\n", " ")
    rules = re.findall(r"aws ec2 authorize-security-group-(ingress|egress) ([^\n]+)", guide)
    assert {d for d, _ in rules} == {"ingress", "egress"}, rules
    for direction, args in rules:
        self_rule = re.search(r"--protocol -1 --source-group \$SG\b", args)
        ssh = re.search(r"--protocol tcp --port 22 --cidr \S+/32\b", args)
        assert self_rule or (direction == "ingress" and ssh), f"{direction} {args}"
    assert sum("--port 22" in a for _, a in rules) == 1


def test_p5_nodes_attach_one_efa_per_network_card():
    _, raw, prepared = _load("aws")
    efa_types = {n: t for n, t in prepared["available_node_types"].items()
                 if _machine(t) in EFA_CARDS}
    assert efa_types, "a p5 node type for multi-node NCCL over EFA"
    for name, node_type in efa_types.items():
        conf = node_type["node_config"]
        interfaces = conf["NetworkInterfaces"]
        cards = sorted(i["NetworkCardIndex"] for i in interfaces)
        assert cards == list(range(EFA_CARDS[_machine(node_type)])), f"{name}: one per card"
        primary = [i for i in interfaces if i["NetworkCardIndex"] == 0]
        assert primary == [{**primary[0], "DeviceIndex": 0, "InterfaceType": "efa"}], (
            f"{name}: the primary interface carries IP (EFA with ENA)")
        for i in interfaces:
            if i["NetworkCardIndex"]:
                assert (i["DeviceIndex"], i["InterfaceType"]) == (1, "efa-only"), i
        assert len({i["SubnetId"] for i in interfaces}) == 1, "one subnet (one zone)"
        assert conf.get("Placement", {}).get("GroupName"), "a cluster placement group"
        # Ray's bootstrap refuses a subnet or group beside the interfaces and wants both in each
        assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & conf.keys(), name
        assert all(i.get("SubnetId") and i.get("Groups") for i in interfaces), name
        if importlib.util.find_spec("boto3"):  # Ray's own step, offline (it imports boto3)
            from ray.autoscaler._private.aws.config import (
                _configure_subnets_and_groups_from_network_interfaces as from_interfaces,
            )
            assert from_interfaces(conf)["SecurityGroupIds"] == [SG] * len(interfaces)
            with pytest.raises(ValueError, match="ONLY be given in each NetworkInterface"):
                from_interfaces({**conf, "SubnetId": "subnet-other"})
        # the container sees every EFA device and may lock memory for RDMA registration
        options = node_type["docker"]["worker_run_options"]
        assert "--device=/dev/infiniband" in options and "--ulimit memlock=-1:-1" in options
        # this type's list replaces setup_commands + worker_setup_commands: it repeats them
        setup = node_type["worker_setup_commands"]
        common = raw["setup_commands"] + raw.get("worker_setup_commands", [])
        assert setup[:len(common)] == common
        efa = " ".join(setup[len(common):])
        assert "efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify" in efa
        assert re.search(r"LD_LIBRARY_PATH=[^ ']*/opt/amazon/efa/lib", efa)
        assert re.search(r"LD_LIBRARY_PATH=[^ ']*ofi-nccl/lib", efa), "NCCL finds the plugin"
        for old_only in ("FI_EFA_USE_DEVICE_RDMA=1", "NCCL_PROTO=simple"):
            assert f"export {old_only}" not in efa, f"{old_only}: aws-ofi-nccl <= 1.6 only"
    others = " ".join(prepared["docker"]["run_options"])
    assert "/dev/infiniband" not in others, "only EFA nodes have the devices"


def test_node_local_disk_for_cache_and_staging():
    """Instance-store NVMe at /opt/dlami/nvme on the host, /mnt/local in the container; Python's
    temp dir (the synthetic cache's default, checkpoint staging) there, Ray's own in /tmp."""
    _, raw, prepared = _load("aws")
    options = prepared["docker"]["run_options"]
    assert "--volume=/opt/dlami/nvme:/mnt/local" in options
    assert "--env=TMPDIR=/mnt/local/tmp" in options and "--env=RAY_TMPDIR=/tmp" in options
    init = " ".join(raw["initialization_commands"])
    assert "mountpoint -q /opt/dlami/nvme" in init and "Instance Storage" in init
    assert re.search(r"mkdir -p /opt/dlami/nvme/tmp", init)
    for name, node_type in raw["available_node_types"].items():
        assert "initialization_commands" not in node_type, f"{name} would skip the mounts"


def test_generation_resource_only_on_the_8_gpu_types(cluster):
    from data_pipeline.generate_ddpm import GENERATE_RESOURCE

    provider, _, _, prepared = cluster
    declared = {name: t["resources"].get(GENERATE_RESOURCE) for name, t in _workers(prepared).items()}
    for name, node_type in _workers(prepared).items():
        gpus = node_type["resources"]["GPU"]
        assert declared[name] == (gpus if gpus == 8 else None), f"{provider}/{name}"
    assert any(declared.values())


def test_dockerfile_builds_on_the_clusters_image():
    """The prebuilt image: the cluster's Ray image plus EFA user space and adr-scale."""
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    image = yaml.safe_load(CONFIGS["aws"].read_text())["docker"]["image"]
    assert re.search(rf"^FROM {re.escape(image)}$", text, re.MULTILINE)
    assert "efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify" in text
    assert re.search(r"^RUN pip install [^\n]* \.$", text, re.MULTILINE), "the project itself"
    assert re.search(r'"ray\[[a-z,]+\]==' + re.escape(ray.__version__) + '"', text), "Ray pinned"
    assert "ofi-nccl/lib" in text and "LD_LIBRARY_PATH" in text


@pytest.mark.parametrize("pattern", sorted(SECRET_PATTERNS))
def test_no_credentials_in_the_file(cluster, pattern):
    provider, text, _, _ = cluster
    hits = SECRET_PATTERNS[pattern].findall(text)
    assert not hits, f"{provider}: {pattern} found in {CONFIGS[provider].name}"


def test_account_specific_names_are_placeholders(cluster):
    provider, text, _, _ = cluster
    missing = [p for p in PLACEHOLDERS[provider] if p not in text]
    assert not missing, f"{provider}: real names committed in place of {missing}"


def test_secret_patterns_catch_fakes():
    """The detectors fire on look-alikes built at run time (no real or example key in the repo)."""
    fake_id = "AKIA" + "Q7" * 8
    fake_secret = ("aB3/" * 10)[:40]
    assert SECRET_PATTERNS["AWS access key id"].search(f"key: {fake_id}")
    assert SECRET_PATTERNS["AWS secret key"].search(f"secret: {fake_secret}\n")
    assert SECRET_PATTERNS["private key block"].search("-----BEGIN RSA PRIVATE KEY-----")
    assert not SECRET_PATTERNS["AWS secret key"].search("ami-YOUR-DLAMI-ID rayproject/ray:2.60.0")


def test_gpu_worker_types_declare_their_real_gpus(cluster):
    provider, _, _, prepared = cluster
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0, (
        "a CPU head that takes no trial actors or training workers")
    gpus = {}
    for name, node_type in _workers(prepared).items():
        machine = _machine(node_type)
        assert machine in MACHINES, f"{provider}/{name}: add {machine} to MACHINES"
        count, accelerator = MACHINES[machine]
        resources = node_type["resources"]
        assert resources.get("GPU") == count, f"{provider}/{name}: {machine} has {count} GPUs"
        labels = [k for k in resources if k.startswith("accelerator_type:")]
        assert labels in ([], [f"accelerator_type:{accelerator}"]), (
            f"{provider}/{name}: {machine} carries {accelerator}, not {labels}")
        assert node_type["min_workers"] == 0, f"{provider}/{name}: idle GPUs cost money"
        assert 1 <= node_type["max_workers"] <= prepared["max_workers"]
        gpus[name] = node_type["resources"]["GPU"]
    assert 1 in gpus.values(), "a 1-GPU type for search trials"
    assert 8 in gpus.values(), "an 8-GPU type for the long run and generation"


def test_idle_gpu_nodes_are_released(cluster):
    provider, _, raw, prepared = cluster
    assert "idle_timeout_minutes" in raw, "set it explicitly; Ray's default is 5"
    assert 1 <= prepared["idle_timeout_minutes"] <= 30
    if provider == "aws":
        assert prepared["provider"]["cache_stopped_nodes"] is False, "terminate, do not stop"


def test_shared_storage_is_wired_the_same_everywhere(cluster):
    provider, text, raw, prepared = cluster
    assert STORAGE[provider] in " ".join(raw["setup_commands"])
    urls = re.findall(r"(?:s3|gs)://[^\s'\"\\]+", text)
    assert urls and all(url.startswith(STORAGE[provider]) for url in urls), urls
    init = " ".join(prepared["initialization_commands"])
    assert re.search(r"mount -t nfs4? .* /mnt/shared\b", init), "shared file system on the host"
    assert "--volume=/mnt/shared:/mnt/shared" in prepared["docker"]["run_options"]
    if provider == "aws":
        efs = re.search(r"fs-[\w-]+\.efs\.([a-z0-9-]+)\.amazonaws\.com", init)
        assert efs and efs.group(1) == prepared["provider"]["region"], "EFS in the cluster's region"


def test_aws_nodes_get_access_from_an_instance_profile():
    _, _, prepared = _load("aws")
    for name, node_type in prepared["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"{name}: no instance profile"


def test_guide_uses_the_same_bucket_and_files():
    guide = (ROOT / "docs" / "cluster.md").read_text()
    urls = re.findall(r"s3://[^\s`'\")]+", guide)
    assert urls and all(u.startswith(STORAGE["aws"]) for u in urls), (
        sorted({u for u in urls if not u.startswith(STORAGE["aws"])}))
    for ref in set(re.findall(r"cluster/[\w.-]+\.yaml", guide)):
        assert (ROOT / ref).is_file(), f"docs/cluster.md names {ref}, which does not exist"
    assert "--dashboard-host=127.0.0.1" in guide or "127.0.0.1:8265" in guide
