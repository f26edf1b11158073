"""A model promoted only once a person approves: `deploy` carries the approval gate
(kfp-kubernetes pod annotation gantry.dev/approval: required). An optional second argument
is the gate's timeout (gantry.dev/approval-timeout)."""
import sys

from kfp import compiler, dsl, kubernetes


@dsl.component
def train() -> str:
    return "model-1"


@dsl.component
def deploy(model: str) -> str:
    return "deployed " + model


@dsl.pipeline(name="promote")
def promote():
    t = train()
    d = deploy(model=t.output)
    kubernetes.add_pod_annotation(d, "gantry.dev/approval", "required")
    if len(sys.argv) > 2:
        kubernetes.add_pod_annotation(d, "gantry.dev/approval-timeout", sys.argv[2])


if __name__ == "__main__":
    compiler.Compiler().compile(promote, sys.argv[1])
