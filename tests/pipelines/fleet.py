"""Across a fleet (the Ansible rollout test): `where` runs once on the agent labelled gpu=h100
and once on the one labelled pool=cpu (kfp-kubernetes node selectors), each giving the host
name it ran on as an output, and `both` prints the two."""
import sys

from kfp import compiler, dsl, kubernetes

IMAGE = "gantry/busybox:latest"


@dsl.container_component
def where(host: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["sh", "-c"],
        args=['mkdir -p "$(dirname "$0")" && hostname | tr -d "\\n" > "$0"', host],
    )


@dsl.container_component
def both(a: str, b: str):
    return dsl.ContainerSpec(image=IMAGE, command=["echo"], args=[a, b])


@dsl.pipeline(name="fleet")
def fleet():
    gpu = where()
    kubernetes.add_node_selector(gpu, label_key="gpu", label_value="h100")
    cpu = where()
    kubernetes.add_node_selector(cpu, label_key="pool", label_value="cpu")
    for t in (gpu, cpu):
        t.set_caching_options(False)
    both(a=gpu.outputs["host"], b=cpu.outputs["host"]).set_caching_options(False)


if __name__ == "__main__":
    compiler.Compiler().compile(fleet, sys.argv[1])
