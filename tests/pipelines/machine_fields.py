"""Machine fields decided at run time: the CPU and memory limits and the accelerator count and
type of a task come from pipeline inputs (strings), so the engine resolves them when the task
becomes ready."""
import sys

from kfp import compiler, dsl

IMAGE = "python:3.11-slim"


@dsl.component(base_image=IMAGE)
def sum_numbers(a: int, b: int) -> int:
    return a + b


@dsl.pipeline(name="machine-fields")
def machine_fields(
    cpu_limit: str = "4000m",
    memory_limit: str = "15G",
    accelerator_type: str = "NVIDIA_TESLA_P4",
    accelerator_limit: str = "1",
):
    (
        sum_numbers(a=1, b=2)
        .set_cpu_limit(cpu_limit)
        .set_memory_limit(memory_limit)
        .set_accelerator_type(accelerator_type)
        .set_accelerator_limit(accelerator_limit)
    )


if __name__ == "__main__":
    compiler.Compiler().compile(
        machine_fields, sys.argv[1] if len(sys.argv) > 1 else "machine_fields.yaml"
    )
