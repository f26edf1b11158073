"""A step that fails on its first attempt and succeeds on the next, telling them apart by
`GANTRY_ATTEMPT` (so it needs no state outside its container): the retry policy under Docker.
`fail_until` is the first attempt that succeeds.
"""
import sys

from kfp import compiler, dsl

IMAGE = "gantry/busybox:latest"


@dsl.container_component
def flaky(fail_until: int):
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["sh", "-c"],
        args=[
            'echo "attempt $GANTRY_ATTEMPT"; [ "$GANTRY_ATTEMPT" -ge "$0" ] || { echo "not yet" >&2; exit 4; }',
            fail_until,
        ],
    )


@dsl.pipeline(name="retry-attempt")
def retry_attempt(fail_until: int = 2):
    t = flaky(fail_until=fail_until)
    t.set_retry(num_retries=2, backoff_duration="1s", backoff_factor=2.0)
    t.set_caching_options(False)


if __name__ == "__main__":
    compiler.Compiler().compile(retry_attempt, sys.argv[1] if len(sys.argv) > 1 else "retry_attempt.yaml")
