//! What this host offers: CPU and memory from sysinfo, NVIDIA GPUs through NVML.
//!
//! Nothing here fails or panics: a value that cannot be read is reported as unknown (0, `None`,
//! no GPUs) and logged.

use std::path::Path;

use gantry_model::{GpuDevice, HostInventory};
use nvml_wrapper::Nvml;

/// Environment variable naming the NVML library to load instead of the system's
/// `libnvidia-ml.so.1` (a stand-in library in tests).
pub const NVML_LIBRARY_ENV: &str = "GANTRY_NVML_LIBRARY";

/// GPUs, the driver version and the CUDA version the driver supports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuProbe {
    pub gpus: Vec<GpuDevice>,
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
}

fn probe_gpus_inner(nvml_library_path: Option<&Path>) -> GpuProbe {
    let nvml = match nvml_library_path {
        Some(p) => Nvml::builder().lib_path(p.as_os_str()).init(),
        None => Nvml::init(),
    };
    let nvml = match nvml {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(error = %e, "NVML unavailable: no GPUs on this host");
            return GpuProbe::default();
        }
    };
    let driver_version = match nvml.sys_driver_version() {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "NVML could not tell the driver version");
            None
        }
    };
    let cuda_version = nvml.sys_cuda_driver_version().ok().map(|v| {
        format!(
            "{}.{}",
            nvml_wrapper::cuda_driver_version_major(v),
            nvml_wrapper::cuda_driver_version_minor(v)
        )
    });
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "NVML could not count devices: no GPUs offered");
            return GpuProbe {
                gpus: Vec::new(),
                driver_version,
                cuda_version,
            };
        }
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        let d = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(index, error = %e, "NVML device in error; not offered");
                continue;
            }
        };
        let uuid = match d.uuid() {
            Ok(u) => u,
            Err(e) => {
                // Without its UUID a GPU cannot be handed to a container reliably.
                tracing::warn!(index, error = %e, "NVML device has no UUID; not offered");
                continue;
            }
        };
        let mem = d.memory_info();
        if let Err(e) = &mem {
            tracing::warn!(index, error = %e, "NVML cannot read device memory; marked unhealthy");
        }
        let mem = mem.ok();
        // Not every GPU reports these (NotSupported): unknown, not unhealthy.
        let utilization_percent = d.utilization_rates().ok().map(|u| u.gpu);
        let mig_enabled = d.mig_mode().ok().map(|m| m.current == 1);
        gpus.push(GpuDevice {
            index,
            uuid,
            name: d.name().unwrap_or_else(|_| "unknown".into()),
            memory_total_bytes: mem.as_ref().map_or(0, |m| m.total),
            memory_free_bytes: mem.as_ref().map_or(0, |m| m.free),
            healthy: mem.is_some(),
            utilization_percent,
            mig_enabled,
        });
    }
    GpuProbe {
        gpus,
        driver_version,
        cuda_version,
    }
}

/// GPUs through NVML: the system library, or the one at `nvml_library_path`. A host without
/// the NVIDIA driver has no GPUs: that is not an error (logged at info).
pub fn probe_gpus(nvml_library_path: Option<&Path>) -> GpuProbe {
    // A broken stand-in library must not take the agent down.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        probe_gpus_inner(nvml_library_path)
    }))
    .unwrap_or_else(|_| {
        tracing::warn!("NVML probing panicked: no GPUs offered");
        GpuProbe::default()
    })
}

/// CPU cores this process may use: the affinity mask and cgroup CPU quota (through
/// `available_parallelism`), else sysinfo's count of CPUs.
fn cpu_cores() -> f64 {
    match std::thread::available_parallelism() {
        Ok(n) => n.get() as f64,
        Err(_) => sysinfo::System::physical_core_count()
            .map(|n| n as f64)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot count CPUs: reporting 1");
                1.0
            }),
    }
}

/// Total memory, or the cgroup's limit when it is lower (an agent inside a container).
fn memory_bytes() -> u64 {
    match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            let total = sys.total_memory();
            match sys.cgroup_limits() {
                Some(l) if l.total_memory > 0 && l.total_memory < total => l.total_memory,
                _ => total,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "sysinfo unavailable: reporting no memory");
            0
        }
    }
}

/// Bytes free on the file system holding `dir` (the mount point that is its longest prefix).
fn disk_free_bytes(dir: &Path) -> Option<u64> {
    let dir = std::path::absolute(dir).ok()?;
    let disks = sysinfo::Disks::new_with_refreshed_list().ok()?;
    disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
}

/// This host's inventory, reported when the agent registers. GPUs come through the NVML
/// library named by [`NVML_LIBRARY_ENV`] if set, else the system's; disk space is that of the
/// file system holding `work_dir`.
pub fn probe_host(runtime: &str, work_dir: &Path) -> HostInventory {
    let library = std::env::var_os(NVML_LIBRARY_ENV).filter(|v| !v.is_empty());
    let gpu = probe_gpus(library.as_deref().map(Path::new));
    let hostname = sysinfo::System::host_name().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the host name");
        "localhost".into()
    });
    HostInventory {
        hostname,
        cpu_cores: cpu_cores(),
        memory_bytes: memory_bytes(),
        gpus: gpu.gpus,
        driver_version: gpu.driver_version,
        cuda_version: gpu.cuda_version,
        disk_free_bytes: disk_free_bytes(work_dir),
        os: sysinfo::System::long_os_version().ok(),
        runtime: runtime.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_this_host() {
        let inv = probe_host("process", Path::new("."));
        assert!(!inv.hostname.is_empty());
        assert!(inv.cpu_cores >= 1.0);
        assert!(inv.memory_bytes > 0);
        assert!(inv.disk_free_bytes.is_some_and(|b| b > 0), "{inv:?}");
        assert_eq!(inv.runtime, "process");
    }

    #[test]
    fn missing_nvml_library_means_no_gpus() {
        let p = probe_gpus(Some(Path::new("/nonexistent/libnvidia-ml.so.1")));
        assert!(p.gpus.is_empty());
        assert_eq!(p.driver_version, None);
        // A file that is not a shared library at all.
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(f.path(), b"not an ELF file").expect("write");
        assert!(probe_gpus(Some(f.path())).gpus.is_empty());
    }
}
