//! The agent's NVML path against the stand-in library (tests/nvml/standin_nvml.c), loaded
//! through nvml-wrapper's library-path option as on a host without GPUs: what it reports for
//! each GPU, and that a GPU NVML reports in error is offered as unhealthy.

use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_agent::inventory::{probe_gpus, probe_host, NVML_LIBRARY_ENV};

fn build_standin(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/nvml/standin_nvml.c");
    let out = dir.join("libnvidia-ml-standin.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc runs");
    assert!(status.success(), "building {} failed", src.display());
    out
}

#[test]
fn the_real_nvml_path_reports_the_stand_in_gpus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build_standin(dir.path());
    // One process, one test: the environment is this test's alone.
    std::env::set_var(
        "GANTRY_STANDIN_GPUS",
        "GPU-aaaa-0|NVIDIA H100 80GB HBM3|81559|util=37;\
         GPU-aaaa-1|NVIDIA H100 80GB HBM3|81559|mig;\
         GPU-bbbb-2|NVIDIA A100-SXM4-40GB|40960|lost",
    );
    let probe = probe_gpus(Some(&lib));
    assert_eq!(probe.driver_version.as_deref(), Some("550.54.15"));
    assert_eq!(probe.cuda_version.as_deref(), Some("12.4"));
    let g = &probe.gpus;
    assert_eq!(g.len(), 3, "{g:#?}");
    assert_eq!((g[0].index, g[0].uuid.as_str()), (0, "GPU-aaaa-0"));
    assert_eq!(g[0].name, "NVIDIA H100 80GB HBM3");
    assert_eq!(g[0].memory_total_bytes, 81559 << 20);
    assert_eq!(
        g[0].memory_free_bytes,
        (81559u64 << 20) - ((81559u64 << 20) / 8)
    );
    assert_eq!(g[0].utilization_percent, Some(37));
    assert_eq!(g[0].mig_enabled, Some(false));
    assert_eq!(g[1].mig_enabled, Some(true));
    assert!(g[0].healthy && g[1].healthy);
    // NVML reports the third in error: still listed (by UUID), but unhealthy.
    assert_eq!(g[2].uuid, "GPU-bbbb-2");
    assert!(!g[2].healthy, "{:#?}", g[2]);

    // The whole inventory takes the library from the environment, as the agent binary does.
    std::env::set_var(NVML_LIBRARY_ENV, &lib);
    std::env::set_var("GANTRY_STANDIN_GPUS", "GPU-cccc-0|Tesla T4|15360");
    let inv = probe_host("docker", dir.path());
    assert_eq!(inv.gpus.len(), 1);
    assert_eq!(inv.gpus[0].name, "Tesla T4");
    assert_eq!(inv.cuda_version.as_deref(), Some("12.4"));

    // No GPUs configured: none reported, not an error.
    std::env::set_var("GANTRY_STANDIN_GPUS", "");
    assert!(probe_gpus(Some(&lib)).gpus.is_empty());
}
