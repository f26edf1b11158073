"""kfp-kubernetes secrets as variables and PVC mounts, run on agents given --secrets-dir and
--volume. Compiles (needs kfp-kubernetes==2.16.1):

- secrets_volumes.yaml: `use-secret` gets key `token` of secret `api` as API_TOKEN and the
  agent volume `scratch` at /data; it prints the value (to be masked in the logs), writes its
  SHA-256 and a line built from /data/in.txt into the volume;
- missing_secret.yaml: a step needing secret `absent`, which no agent has;
- dynamic_secret.yaml: the secret name is a pipeline parameter, resolved when the step becomes
  ready: the step gets key `token` as K and the whole secret as files under /mnt/creds, and
  checks they agree;
- config_maps.yaml: key `mode` of the config map its parameter names (default `app`) as MODE,
  config map `app` as files under /etc/app, and an optional one that no agent has."""
import os
import sys

from kfp import compiler, dsl, kubernetes

IMAGE = "gantry/busybox:latest"


@dsl.container_component
def use_secret():
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["sh", "-c"],
        args=[
            'test -n "$API_TOKEN" || { echo "API_TOKEN is not set" >&2; exit 2; }\n'
            'echo "token is $API_TOKEN"\n'
            'echo "on stderr: $API_TOKEN" >&2\n'
            'test -z "$OPTIONAL_ONE" || { echo "OPTIONAL_ONE is set" >&2; exit 3; }\n'
            'printf "%s" "$API_TOKEN" | sha256sum | cut -d" " -f1 > /data/token.sha256\n'
            'echo "read: $(cat /data/in.txt)" > /data/out.txt\n'
        ],
    )


@dsl.pipeline(name="secrets-volumes")
def secrets_volumes():
    t = use_secret().set_caching_options(False)
    kubernetes.use_secret_as_env(t, secret_name="api", secret_key_to_env={"token": "API_TOKEN"})
    kubernetes.use_secret_as_env(
        t, secret_name="not-here", secret_key_to_env={"k": "OPTIONAL_ONE"}, optional=True
    )
    kubernetes.mount_pvc(t, pvc_name="scratch", mount_path="/data")


@dsl.container_component
def nothing():
    return dsl.ContainerSpec(image=IMAGE, command=["true"])


@dsl.pipeline(name="missing-secret")
def missing_secret():
    t = nothing().set_caching_options(False)
    kubernetes.use_secret_as_env(t, secret_name="absent", secret_key_to_env={"k": "K"})


@dsl.container_component
def check_dynamic():
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["sh", "-c"],
        args=[
            'test -n "$K" || { echo "K is not set" >&2; exit 2; }\n'
            'test "$K" = "$(cat /mnt/creds/token)" || { echo "the file differs" >&2; exit 3; }\n'
            'echo "dynamic token is $K"\n'
        ],
    )


@dsl.pipeline(name="dynamic-secret")
def dynamic_secret(secret_name: str = "api"):
    t = check_dynamic().set_caching_options(False)
    kubernetes.use_secret_as_env(t, secret_name=secret_name, secret_key_to_env={"token": "K"})
    kubernetes.use_secret_as_volume(t, secret_name=secret_name, mount_path="/mnt/creds")


@dsl.container_component
def check_config():
    return dsl.ContainerSpec(
        image=IMAGE,
        command=["sh", "-c"],
        args=[
            'test "$MODE" = fast || { echo "MODE is \'$MODE\'" >&2; exit 2; }\n'
            'test "$(cat /etc/app/mode)" = fast || { echo "the file differs" >&2; exit 3; }\n'
            'test -z "$OPT" || { echo "OPT is set" >&2; exit 4; }\n'
            'echo "mode is $MODE"\n'
        ],
    )


@dsl.pipeline(name="config-maps")
def config_maps(cm: str = "app"):
    t = check_config().set_caching_options(False)
    kubernetes.use_config_map_as_env(t, config_map_name=cm, config_map_key_to_env={"mode": "MODE"})
    kubernetes.use_config_map_as_volume(t, config_map_name="app", mount_path="/etc/app")
    kubernetes.use_config_map_as_env(
        t, config_map_name="absent", config_map_key_to_env={"k": "OPT"}, optional=True
    )


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "secrets_volumes.yaml"
    here = os.path.dirname(out)
    compiler.Compiler().compile(secrets_volumes, out)
    compiler.Compiler().compile(missing_secret, os.path.join(here, "missing_secret.yaml"))
    compiler.Compiler().compile(dynamic_secret, os.path.join(here, "dynamic_secret.yaml"))
    compiler.Compiler().compile(config_maps, os.path.join(here, "config_maps.yaml"))
