"""A chain of N short shell steps (N from argv[2], default 300) for the fault tests.

Each step appends its own name to the file given as the `marker` parameter, so a test can count
how many times every step really ran, whatever the coordinators went through meanwhile.
"""
from kfp import compiler, dsl


@dsl.container_component
def mark(name: str, marker: str, nap: str):
    return dsl.ContainerSpec(
        image="gantry/busybox:latest",
        command=["sh", "-c"],
        args=['echo "$0" >> "$1"; sleep "$2"', name, marker, nap],
    )


def build(steps: int):
    @dsl.pipeline(name=f"chain-{steps}")
    def chain(marker: str, nap: str = "0.02"):
        prev = None
        for i in range(steps):
            t = mark(name=f"step-{i}", marker=marker, nap=nap)
            t.set_display_name(f"step-{i}")
            # The fault tests count executions: every submission must really run.
            t.set_caching_options(False)
            if prev is not None:
                t.after(prev)
            prev = t

    return chain


if __name__ == "__main__":
    import sys

    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    compiler.Compiler().compile(build(n), sys.argv[1])
