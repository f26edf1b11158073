//! The attempt directory as the host and the step see it, and the rules that keep the
//! launcher inside it: ids that are safe directory names, and output files read only when
//! they (links resolved) stay in the directory.

use std::path::{Path, PathBuf};

use gantry_model::{validate_artifact_name, ArtifactNameError, StepSpec};

use crate::runtime::PathMap;

/// Largest output parameter file or executor output the launcher reads.
pub const MAX_OUTPUT_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A path the launcher will not read, or a name it will not make a path of. Paths are shown
/// as the step sees them.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{0} is a symbolic link that leads nowhere on this host")]
    DanglingLink(String),
    #[error("{0} leads outside the attempt directory")]
    Outside(String),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{0} is not a file")]
    NotAFile(String),
    #[error("{path} holds {bytes} bytes; at most {MAX_OUTPUT_FILE_BYTES} are accepted")]
    TooLarge { path: String, bytes: u64 },
    /// `what` says which name (`run id`, `output artifact`...).
    #[error("{what} {name:?}: {error}")]
    Name {
        what: String,
        name: String,
        error: ArtifactNameError,
    },
    #[error("task id is empty")]
    EmptyTaskId,
}

/// The attempt directory and how the step sees it.
pub(super) struct Layout {
    pub(super) host: PathBuf,
    pub(super) map: PathMap,
}

impl Layout {
    pub(super) fn host(&self, rel: &str) -> PathBuf {
        self.host.join(rel)
    }

    pub(super) fn step(&self, rel: &str) -> String {
        self.map
            .container_path(&self.host.join(rel))
            .unwrap_or_else(|| self.host.join(rel).to_string_lossy().into_owned())
    }

    /// `host` if it exists and, symbolic links resolved, stays inside the attempt directory;
    /// `Ok(None)` if it does not exist.
    pub(super) fn confined(&self, host: &Path) -> Result<Option<PathBuf>, LayoutError> {
        let real = match std::fs::canonicalize(host) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling link is "not written"; a link to outside is refused below.
                return match std::fs::symlink_metadata(host) {
                    Ok(m) if m.file_type().is_symlink() => {
                        Err(LayoutError::DanglingLink(self.display(host)))
                    }
                    _ => Ok(None),
                };
            }
            Err(error) => {
                return Err(LayoutError::Io {
                    path: self.display(host),
                    error,
                })
            }
        };
        let root = std::fs::canonicalize(&self.host).map_err(|error| LayoutError::Io {
            path: self.host.display().to_string(),
            error,
        })?;
        if real.starts_with(&root) {
            Ok(Some(real))
        } else {
            Err(LayoutError::Outside(self.display(host)))
        }
    }

    pub(super) fn display(&self, host: &Path) -> String {
        self.map
            .container_path(host)
            .unwrap_or_else(|| host.display().to_string())
    }
}

/// Reads a small output file the step wrote, refusing links out of the attempt directory and
/// files over [`MAX_OUTPUT_FILE_BYTES`]; `Ok(None)` if it does not exist.
pub(super) fn read_output_file(
    layout: &Layout,
    host: &Path,
) -> Result<Option<Vec<u8>>, LayoutError> {
    let Some(real) = layout.confined(host)? else {
        return Ok(None);
    };
    let io = |error| LayoutError::Io {
        path: layout.display(host),
        error,
    };
    let meta = std::fs::metadata(&real).map_err(io)?;
    if !meta.is_file() {
        return Err(LayoutError::NotAFile(layout.display(host)));
    }
    if meta.len() > MAX_OUTPUT_FILE_BYTES {
        return Err(LayoutError::TooLarge {
            path: layout.display(host),
            bytes: meta.len(),
        });
    }
    std::fs::read(&real).map(Some).map_err(io)
}

fn check_name(what: &str, name: &str) -> Result<(), LayoutError> {
    validate_artifact_name(name).map_err(|error| LayoutError::Name {
        what: what.to_string(),
        name: name.to_string(),
        error,
    })
}

/// The run id and every segment of the task id are safe directory names.
pub(super) fn check_task_path(run_id: &str, task_id: &str) -> Result<(), LayoutError> {
    check_name("run id", run_id)?;
    if task_id.is_empty() {
        return Err(LayoutError::EmptyTaskId);
    }
    for seg in task_id.split('/') {
        check_name(&format!("task id {task_id:?}: segment"), seg)?;
    }
    Ok(())
}

/// `run_id` and every segment of `task_id` must be safe directory names.
pub(super) fn check_ids(spec: &StepSpec) -> Result<(), LayoutError> {
    check_task_path(spec.run_id.as_str(), spec.task_id.as_str())?;
    for name in spec.inputs.artifacts.keys() {
        check_name("input artifact", name)?;
    }
    for name in spec.outputs.parameters.keys() {
        check_name("output parameter", name)?;
    }
    for name in spec.outputs.artifacts.keys() {
        check_name("output artifact", name)?;
    }
    Ok(())
}
