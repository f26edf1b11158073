//! What this host offers: CPU and memory from sysinfo, NVIDIA GPUs through NVML.

use std::path::Path;

use gantry_model::{GpuDevice, HostInventory};
use nvml_wrapper::Nvml;

/// GPUs through NVML. A host without the NVIDIA driver has no GPUs: that is not an error.
pub fn probe_gpus(library: Option<&Path>) -> (Vec<GpuDevice>, Option<String>) {
    let nvml = match library {
        Some(p) => Nvml::builder().lib_path(p.as_os_str()).init(),
        None => Nvml::init(),
    };
    let nvml = match nvml {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(error = %e, "NVML unavailable: no GPUs on this host");
            return (Vec::new(), None);
        }
    };
    let driver = nvml.sys_driver_version().ok();
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "NVML could not count devices");
            return (Vec::new(), driver);
        }
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        match nvml.device_by_index(index) {
            Ok(d) => {
                let mem = d.memory_info().ok();
                gpus.push(GpuDevice {
                    index,
                    uuid: d.uuid().unwrap_or_else(|_| format!("unknown-{index}")),
                    name: d.name().unwrap_or_else(|_| "unknown".into()),
                    memory_total_bytes: mem.as_ref().map_or(0, |m| m.total),
                    memory_free_bytes: mem.as_ref().map_or(0, |m| m.free),
                    healthy: mem.is_some(),
                });
            }
            Err(e) => tracing::warn!(index, error = %e, "NVML device in error; not offered"),
        }
    }
    (gpus, driver)
}

pub fn probe_host(runtime: &str) -> HostInventory {
    let memory_bytes = match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            sys.total_memory()
        }
        Err(e) => {
            tracing::warn!(error = %e, "sysinfo unavailable: reporting no memory");
            0
        }
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let library = std::env::var_os("GANTRY_NVML_LIBRARY");
    let (gpus, driver_version) = probe_gpus(library.as_deref().map(Path::new));
    HostInventory {
        hostname: sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into()),
        cpu_cores: cpus as f64,
        memory_bytes,
        gpus,
        driver_version,
        os: sysinfo::System::long_os_version().ok(),
        runtime: runtime.to_string(),
    }
}
