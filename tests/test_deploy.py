"""What deploy/ and the packaging promise: the alert rules load and fire as their unit tests say (promtool,
else a validator of their shape), every metric the rules and the dashboard name is exported by a real API
or a real worker, compose.yaml provisions both and refuses to start without its secrets, and the image
installs the pinned dependencies in a layer of their own."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stocksync.devtools.testing import wait_for

from .apihelp import api_settings, running
from .test_worker_operations import WorkerProcess, write_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "stocksync.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "stocksync.json"
# Named by the rules, exported by work landing beside this one: the order pollers' counter (on the API).
ELSEWHERE: set[str] = set()  # metrics exported by a process the test does not start (none now)


def promtool() -> str | None:
    return shutil.which("promtool")


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metrics a PromQL expression reads (ours, and Prometheus's own `up`)."""
    names = set(re.findall(r"\bstocksync_[a-z0-9_]+", expr))
    return names | ({"up"} if re.search(r"\bup\{", expr) else set())


@pytest.mark.skipif(promtool() is None, reason="promtool (Debian's prometheus package) is not installed")
def test_promtool_checks_the_rules_runs_their_unit_tests_and_checks_the_config():
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES.with_suffix(".test.yml"))],
                 ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")]):
        run = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr


def test_the_rules_have_the_shape_prometheus_loads():
    """What promtool checks first, for machines without it: names, durations, labels, annotations, brackets;
    and each runbook link points at a section of docs/runbook.md."""
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", (ROOT / "docs" / "runbook.md").read_text(), re.M)}
    seen = set()
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Stocksync[A-Z][A-Za-z]+", rule["alert"]) and rule["alert"] not in seen
        seen.add(rule["alert"])
        assert "for" not in rule or re.fullmatch(r"\d+[smhd]", rule["for"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys()
        assert rule["annotations"]["runbook"].split("#")[1] in anchors, rule["annotations"]["runbook"]
        expr = rule["expr"]
        for opening, closing in ("()", "[]", "{}"):
            assert expr.count(opening) == expr.count(closing), expr
        assert metric_names(expr), expr
    wanted = {"StocksyncChangeWaiting", "StocksyncDeadLettersGrowing", "StocksyncCircuitOpen", "StocksyncNoLiveWorker",
              "StocksyncOrdersFoundOnlyByPolling"}
    assert wanted <= seen
    tested = set(re.findall(r"alertname: (\w+)", RULES.with_suffix(".test.yml").read_text()))
    assert tested == seen  # every alert has its unit test


def exported(text: str) -> set[str]:
    """Every name a scrape of this exposition offers a query (a histogram's _bucket, _sum and _count, a
    counter's _total), samples or not."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {s.name for s in family.samples}
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(family.type, ())
        names |= {family.name + suffix for suffix in suffixes}
    return names


@pytest.mark.usefixtures("api_env")
async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(settings, tmp_path, sims):
    named = set().union(*(metric_names(r["expr"]) for r in rules()), *map(metric_names, dashboard_exprs()))
    async with running(api_settings(settings)) as client:
        api = exported((await client.get("/metrics")).text)
    sim, url = sims["amazon"]
    sim.reset()
    worker = WorkerProcess(write_config(tmp_path, settings, url), "--channel", "amazon")
    try:
        await wait_for(worker.healthy, 20, "the worker's /healthz")
        async with httpx.AsyncClient(timeout=5) as client:
            workers = exported((await client.get(worker.base + "/metrics")).text)
    finally:
        worker.stop()
    missing = named - api - workers - ELSEWHERE - {"up"}
    assert not missing, sorted(missing)
    assert {"stocksync_channel_oldest_pending_age_seconds", "stocksync_build_info"} <= api
    assert {"stocksync_push_duration_seconds_bucket", "stocksync_propagation_lag_seconds_bucket",
            "stocksync_build_info"} <= workers
    assert ELSEWHERE <= named


def test_the_dashboard_is_grafana_json_on_the_provisioned_data_source():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "stocksync" and doc["panels"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_refuses_to_start_without_its_secrets():
    doc = compose()
    env = doc["services"]["api"]["environment"]
    secrets = [k for k in env if any(w in k for w in ("TOKEN", "SECRET", "APP_ID"))]
    assert len(secrets) >= 8
    for name in secrets:
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", env[name]), name
    assert "change-me" not in (ROOT / "compose.yaml").read_text()
    grafana = doc["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert grafana.startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_compose_runs_prometheus_and_grafana_provisioned_from_deploy_and_checks_workers():
    doc = compose()
    services = doc["services"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    workers = [name for name in services if name.startswith("worker-")]
    assert len(workers) == 3
    for name in workers:
        service = services[name]
        command = service["command"]
        port = command[command.index("--metrics-port") + 1]
        assert "0.0.0.0" in command and f"{name}:{port}" in targets
        assert f"127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"])
        assert service["build"] == "." and "disable" not in service["healthcheck"]
    assert "api:8000" in targets
    for service, mounts in (("prometheus", services["prometheus"]["volumes"]),
                            ("grafana", services["grafana"]["volumes"])):
        local = [m.split(":")[0] for m in mounts if m.startswith("./")]
        assert local, service
        for path in local:
            assert (ROOT / path).is_dir(), path
    assert "--maxmemory-policy" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--maxmemory-policy") + 1] == "noeviction"


def load_constraints_module():
    spec = importlib.util.spec_from_file_location("deploy_constraints", DEPLOY / "constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_constraints_pin_the_runtime_dependencies_the_tests_run_with():
    module = load_constraints_module()
    pins = module.closure()
    assert {"redis", "hiredis", "starlette", "uvicorn", "aiohttp", "prometheus-client", "orjson", "anyio"} <= set(pins)
    assert (ROOT / "constraints.txt").read_text() == module.render(pins), "run `make constraints`"


def test_dependencies_whose_internals_are_used_are_bounded():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounded = {re.split(r"[\[<>=]", d)[0] for d in deps if "<" in d}
    assert {"redis", "starlette", "uvicorn"} <= bounded


def test_the_image_installs_the_pinned_dependencies_before_the_source():
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    build = text.split("\nFROM ")[1]  # (the build stage)
    steps = [line.strip() for line in build.splitlines() if line.strip().startswith(("COPY ", "RUN "))]
    assert steps[0] == "COPY constraints.txt ./"
    assert steps[1].startswith("RUN ") and "-r constraints.txt" in steps[1]
    source = next(i for i, s in enumerate(steps) if s.startswith("COPY stocksync"))
    assert source > 1 and "--no-deps" in steps[-1] and "pip check" in steps[-1]
