"""A Kubernetes-only feature Gantry refuses at submit: kfp-kubernetes `use_config_map_as_env`
(environment variables from a config map, which agents do not have)."""
import sys

from kfp import compiler, dsl, kubernetes


@dsl.container_component
def print_env():
    return dsl.ContainerSpec(
        image="gantry/busybox:latest", command=["sh", "-c", 'echo "level: $LOG_LEVEL"']
    )


@dsl.pipeline(name="config-map-env")
def config_map_env():
    t = print_env()
    kubernetes.use_config_map_as_env(
        t, config_map_name="settings", config_map_key_to_env={"level": "LOG_LEVEL"}
    )


if __name__ == "__main__":
    compiler.Compiler().compile(
        config_map_env, sys.argv[1] if len(sys.argv) > 1 else "config_map_env.yaml"
    )
