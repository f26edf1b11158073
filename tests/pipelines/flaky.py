"""Steps whose outcome depends on files on the agent's host, for retry tests on the process
runtime:

- `first`: appends a line to `marker` (counts how often it ran);
- `gated`: fails until the file `gate` exists;
- `second_try`: fails on its first attempt (creating `flag`), succeeds on the next; its retry
  policy allows 2 retries with a 1 s backoff;
- `last`: appends a line to `after`.

Caching is off: what a retried run reuses must come from the retry, not from the cache.
"""
import sys

from kfp import compiler, dsl

IMAGE = "gantry/busybox:latest"


@dsl.container_component
def first(marker: str):
    return dsl.ContainerSpec(image=IMAGE, command=["sh", "-c"], args=['echo ran >> "$0"', marker])


@dsl.container_component
def gated(gate: str):
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["sh", "-c"],
        args=['test -e "$0" || { echo "no gate at $0"; exit 3; }', gate],
    )


@dsl.container_component
def second_try(flag: str):
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["sh", "-c"],
        args=['if [ -e "$0" ]; then echo second; else touch "$0"; echo first; exit 1; fi', flag],
    )


@dsl.container_component
def last(after: str):
    return dsl.ContainerSpec(image=IMAGE, command=["sh", "-c"], args=['echo ran >> "$0"', after])


@dsl.pipeline(name="flaky")
def flaky(marker: str, gate: str, flag: str, after: str):
    a = first(marker=marker)
    b = gated(gate=gate).after(a)
    c = second_try(flag=flag).after(a)
    c.set_retry(num_retries=2, backoff_duration="1s")
    d = last(after=after).after(b, c)
    for t in (a, b, c, d):
        t.set_caching_options(False)


if __name__ == "__main__":
    compiler.Compiler().compile(flaky, sys.argv[1] if len(sys.argv) > 1 else "flaky.yaml")
