"""kfp.Client (kfp 2.16.1, unmodified) against a Gantry cluster: the calls Kubeflow users make
from CI and notebooks, through the KFP v2beta1 REST API. Run by tests/tests/kfp_client.rs with
GANTRY_KFP_HOST (a follower's https address), GANTRY_KFP_TOKEN, GANTRY_KFP_CA and
GANTRY_KFP_WORKDIR. Exits non-zero with the failed check on the first difference."""

import json
import os
import sys
import time

import kfp
import kfp_server_api
import urllib3
from kfp import compiler, dsl

HOST = os.environ["GANTRY_KFP_HOST"]
TOKEN = os.environ["GANTRY_KFP_TOKEN"]
CA = os.environ["GANTRY_KFP_CA"]
WORK = os.environ["GANTRY_KFP_WORKDIR"]


@dsl.component
def add(a: int, b: int) -> int:
    return a + b


@dsl.component
def nap(seconds: int):
    import time

    time.sleep(seconds)


@dsl.component
def fail(message: str):
    raise RuntimeError(message)


@dsl.pipeline(name="add-pipeline")
def add_pipeline(a: int = 1, b: int = 2):
    add(a=a, b=b)


@dsl.pipeline(name="napper")
def napper(seconds: int = 300):
    nap(seconds=seconds)


@dsl.pipeline(name="failer")
def failer(message: str = "no luck"):
    fail(message=message)


def step(msg):
    print(f"--- {msg}", flush=True)


def expect_api_error(status, fn, *words):
    """fn() must raise ApiException with HTTP `status` whose body names every word."""
    try:
        fn()
    except kfp_server_api.ApiException as e:
        assert e.status == status, f"wanted HTTP {status}, got {e.status}: {e.body}"
        body = json.loads(e.body)
        assert isinstance(body.get("code"), int), body
        for w in words:
            assert w in body["message"], f"{w!r} not in {body['message']!r}"
        return body
    raise AssertionError(f"wanted HTTP {status}, the call succeeded")


http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=CA)


def raw(method, path, body=None, headers=None):
    h = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    h.update(headers or {})
    r = http.request(method, HOST + path, body=body, headers=h)
    return r.status, json.loads(r.data or b"{}")


def wait_state(client, run_id, states, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = client.get_run(run_id)
        if r.state in states:
            return r
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} is {r.state}, not in {states} after {timeout}s")


def count_runs(client):
    return client.list_runs(page_size=1).total_size or 0


def main():
    step("construct: the client's health check")
    client = kfp.Client(host=HOST, existing_token=TOKEN, ssl_ca_cert=CA)
    assert client.get_kfp_healthz().multi_user is False

    add_yaml = os.path.join(WORK, "add.yaml")
    compiler.Compiler().compile(add_pipeline, add_yaml)

    step("upload a pipeline, a duplicate, and a new version by pipeline name")
    p = client.upload_pipeline(add_yaml, pipeline_name="add", description="adds")
    assert p.pipeline_id and p.display_name == "add", p
    expect_api_error(
        409, lambda: client.upload_pipeline(add_yaml, pipeline_name="add"), "add"
    )
    v2 = client.upload_pipeline_version(
        add_yaml, pipeline_version_name="v2", pipeline_name="add"
    )
    assert v2.pipeline_id == p.pipeline_id and v2.pipeline_version_id, v2
    versions = client.list_pipeline_versions(p.pipeline_id).pipeline_versions
    assert sorted(v.display_name for v in versions) == ["add", "v2"], versions
    got = client.get_pipeline_version(p.pipeline_id, v2.pipeline_version_id)
    assert got.pipeline_spec["pipelineInfo"]["name"] == "add-pipeline", got.pipeline_spec

    step("list_pipelines with a name filter, both operation spellings")
    for op in (1, "EQUALS"):
        f = json.dumps(
            {"predicates": [{"operation": op, "key": "display_name", "stringValue": "add"}]}
        )
        found = client.list_pipelines(filter=f).pipelines
        assert [x.pipeline_id for x in found] == [p.pipeline_id], found
    assert client.get_pipeline_id("add") == p.pipeline_id

    step("create_experiment twice: one experiment")
    exp = client.create_experiment("exp-a", description="the flow's")
    again = client.create_experiment("exp-a")
    assert again.experiment_id == exp.experiment_id
    assert client.get_experiment(experiment_name="exp-a").experiment_id == exp.experiment_id

    step("run_pipeline by pipeline and version id, with typed parameters")
    run = client.run_pipeline(
        experiment_id=exp.experiment_id,
        job_name="by-id",
        pipeline_id=p.pipeline_id,
        version_id=v2.pipeline_version_id,
        params={"a": 5, "b": 6},
    )
    done = client.wait_for_run_completion(run.run_id, timeout=180, sleep_duration=1)
    assert done.state == "SUCCEEDED", done
    got = client.get_run(run.run_id)
    assert got.display_name == "by-id" and got.experiment_id == exp.experiment_id
    assert got.pipeline_version_reference.pipeline_version_id == v2.pipeline_version_id
    tasks = {t.display_name: t for t in got.run_details.task_details}
    assert tasks["add"].state == "SUCCEEDED", tasks["add"]
    assert got.created_at and got.finished_at and got.finished_at >= got.created_at
    assert [h.state for h in got.state_history][-1] == "SUCCEEDED", got.state_history
    # Gantry's own fields carry the step's outputs (kfp.Client's model drops them).
    status, body = raw("GET", f"/apis/v2beta1/runs/{run.run_id}")
    outs = {t["display_name"]: t for t in body["run_details"]["task_details"]}
    assert outs["add"]["gantry_outputs"]["parameters"]["Output"] == 11, outs["add"]
    # The stored version's pipeline comes with the run on GET, not in lists.
    assert got.pipeline_spec["pipelineInfo"]["name"], got.pipeline_spec
    status, listed = raw("GET", "/apis/v2beta1/runs?page_size=100")
    assert all("pipeline_spec" not in r for r in listed["runs"]), listed

    step("create_run_from_pipeline_func into the experiment")
    r2 = client.create_run_from_pipeline_func(
        add_pipeline, arguments={"a": 2, "b": 3}, experiment_name="exp-a"
    )
    assert client.wait_for_run_completion(r2.run_id, 180, 1).state == "SUCCEEDED"

    step("a run without an experiment goes to Default")
    r3 = client.create_run_from_pipeline_package(add_yaml, arguments={"a": 1})
    default = client.get_experiment(experiment_name="Default")
    assert client.get_run(r3.run_id).experiment_id == default.experiment_id

    step("list_runs with page_size=2 over more than 5 runs, the same filter on every page")
    for i in range(6):
        client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=f"page-{i}",
            pipeline_id=p.pipeline_id,
            version_id=v2.pipeline_version_id,
            params={"a": i},
        )
    f = json.dumps(
        {"predicates": [{"operation": "IS_SUBSTRING", "key": "display_name", "stringValue": "page-"}]}
    )
    for sort in ("", "created_at desc"):
        seen, token, total = [], "", None
        while True:
            page = client.list_runs(
                experiment_id=exp.experiment_id,
                page_size=2,
                page_token=token,
                sort_by=sort,
                filter=f,
            )
            assert len(page.runs) <= 2
            seen += [r.run_id for r in page.runs]
            total = page.total_size
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) == total == 6, (sort, seen, total)
        stamps = [client.get_run(r).created_at for r in seen]
        assert stamps == sorted(stamps, reverse=bool(sort)), (sort, stamps)

    step("terminate a long run: CANCELED (wait_for_run_completion would not stop on it)")
    long = client.create_run_from_pipeline_func(
        napper, arguments={"seconds": 300}, experiment_name="exp-a"
    )
    wait_state(client, long.run_id, {"RUNNING"})
    client.terminate_run(long.run_id)
    canceled = wait_state(client, long.run_id, {"CANCELED"}, timeout=60)
    assert canceled.finished_at is not None
    expect_api_error(400, lambda: client.terminate_run(long.run_id), "CANCELED")

    step("a failed run, its error, and a retry (same run id)")
    bad = client.create_run_from_pipeline_func(failer, arguments={"message": "boom"})
    failed = client.wait_for_run_completion(bad.run_id, 180, 1)
    assert failed.state == "FAILED" and failed.error.message, failed
    client.runs.run_service_retry_run(run_id=bad.run_id)
    again = wait_state(client, bad.run_id, {"RUNNING", "PENDING", "FAILED"})
    assert again.run_id == bad.run_id
    assert client.wait_for_run_completion(bad.run_id, 180, 1).state == "FAILED"

    step("archive, unarchive, delete")
    client.archive_run(r2.run_id)
    assert client.get_run(r2.run_id).storage_state == "ARCHIVED"
    client.unarchive_run(r2.run_id)
    assert client.get_run(r2.run_id).storage_state == "AVAILABLE"
    client.delete_run(r2.run_id)
    expect_api_error(404, lambda: client.get_run(r2.run_id), r2.run_id)

    step("bad input: a 4xx naming the field, and nothing created")
    before = count_runs(client)
    status, body = raw("POST", "/apis/v2beta1/runs", body=b"{")
    assert status == 400 and "not valid" in body["message"], body
    expect_api_error(
        404,
        lambda: client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name="x",
            pipeline_id="no-such-pipeline",
            version_id="no-such-version",
        ),
        "no-such-pipeline",
    )
    expect_api_error(
        400,
        lambda: client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name="x",
            pipeline_id=p.pipeline_id,
            version_id=v2.pipeline_version_id,
            params={"a": "five"},
        ),
        '"a"',
    )
    expect_api_error(400, lambda: client.list_runs(page_token="garbage"), "page_token")
    expect_api_error(
        400,
        lambda: client.list_runs(filter='{"predicates": [{"operation": 1, "key": "owner"}]}'),
        "owner",
    )
    expect_api_error(
        404,
        lambda: client.run_pipeline(
            experiment_id="no-such-experiment",
            job_name="x",
            pipeline_id=p.pipeline_id,
            version_id=v2.pipeline_version_id,
        ),
        "no-such-experiment",
    )
    assert count_runs(client) == before, "a refused request created a run"

    step("an Idempotency-Key gives the first run for a repeated key")
    req = json.dumps(
        {
            "display_name": "idem",
            "experiment_id": exp.experiment_id,
            "pipeline_version_reference": {"pipeline_id": p.pipeline_id},
            "runtime_config": {"parameters": {"a": 1}},
        }
    ).encode()
    s1, first = raw("POST", "/apis/v2beta1/runs", req, {"Idempotency-Key": "evt-42"})
    s2, second = raw("POST", "/apis/v2beta1/runs", req, {"Idempotency-Key": "evt-42"})
    assert (s1, s2) == (200, 200) and first["run_id"] == second["run_id"], (first, second)
    # The cluster keeps a key for 4 s (GANTRY_IDEMPOTENCY_WINDOW): later, a new run.
    time.sleep(4.5)
    s3, third = raw("POST", "/apis/v2beta1/runs", req, {"Idempotency-Key": "evt-42"})
    assert s3 == 200 and third["run_id"] != first["run_id"], (first, third)

    step("recurring runs: create, list (recurringRuns), disable, enable, delete, a bad cron")
    job = client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name="nightly",
        cron_expression="0 0 3 * * *",
        max_concurrency=1,
        pipeline_id=p.pipeline_id,
        version_id=v2.pipeline_version_id,
        params={"a": 7},
        enabled=False,
    )
    assert job.recurring_run_id and job.status == "DISABLED", job
    listed = client.list_recurring_runs(experiment_id=exp.experiment_id).recurring_runs
    assert [j.recurring_run_id for j in listed] == [job.recurring_run_id], listed
    client.enable_recurring_run(job.recurring_run_id)
    assert client.get_recurring_run(job.recurring_run_id).status == "ENABLED"
    client.disable_recurring_run(job.recurring_run_id)
    got = client.get_recurring_run(job.recurring_run_id)
    assert got.status == "DISABLED" and got.trigger.cron_schedule.cron == "0 0 3 * * *", got
    assert got.max_concurrency == "1", got.max_concurrency
    expect_api_error(
        400,
        lambda: client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name="bad",
            cron_expression="0 0 25 * * *",
            pipeline_id=p.pipeline_id,
            version_id=v2.pipeline_version_id,
        ),
        "cron",
        "hour",
    )
    expect_api_error(
        400,
        lambda: client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name="bad",
            interval_second=60,
            max_concurrency=11,
            pipeline_id=p.pipeline_id,
            version_id=v2.pipeline_version_id,
        ),
        "max_concurrency",
    )
    client.delete_recurring_run(job.recurring_run_id)
    assert not client.list_recurring_runs(experiment_id=exp.experiment_id).recurring_runs
    assert count_runs(client) == before + 2, "only the two Idempotency-Key runs were added"

    step("pipelines go: versions first, or cascade")
    expect_api_error(400, lambda: client.delete_pipeline(p.pipeline_id), "versions")
    for v in client.list_pipeline_versions(p.pipeline_id).pipeline_versions:
        client.delete_pipeline_version(p.pipeline_id, v.pipeline_version_id)
    client.delete_pipeline(p.pipeline_id)
    expect_api_error(404, lambda: client.get_pipeline(p.pipeline_id), p.pipeline_id)
    print("kfp.Client flow: all checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the whole story on one screen
        import traceback

        traceback.print_exc()
        sys.exit(1)
