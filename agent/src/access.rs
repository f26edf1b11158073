//! Which artifact URIs this agent reads and writes, whatever the coordinator says (defence in
//! depth against a coordinator that was fooled or spoofed).
//!
//! - **Downloads** (input artifacts) come only from under the run's artifact root (the step
//!   spec's `pipeline_root`), one of this agent's import roots (`--import-root file:///dir`),
//!   or an S3 bucket it allows (`--allow-bucket NAME`). The URI is first checked as text
//!   ([`UriPolicy`]: components, no `.`/`..`); a `file://` URI is then resolved on the host
//!   (symbolic links followed) and must still lie under a root resolved the same way, and so
//!   must every symbolic link below it when it is a directory.
//! - **Uploads** (output artifacts) go only under the run's artifact root.
//!
//! A URI refused here fails the attempt with a message naming it and the rule.
//!
//! What is left: the check and the copy are two steps, so a file swapped for a symbolic link
//! in between by someone who can write inside an import root is not caught. Import roots are
//! meant to be directories only the operator writes.

use std::path::{Path, PathBuf};

use gantry_model::UriPolicy;

/// Entries looked at below a directory input before giving up (refused, not truncated).
pub const MAX_WALK_ENTRIES: usize = 200_000;

/// This agent's import roots and buckets.
#[derive(Debug, Clone, Default)]
pub struct UriAccess {
    /// As given (`file:///dir`), for the textual check.
    import_roots: Vec<String>,
    /// The same, resolved on this host.
    resolved_roots: Vec<PathBuf>,
    buckets: Vec<String>,
}

/// A bad `--import-root` or `--allow-bucket`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AccessConfigError(String);

impl UriAccess {
    /// Import roots must be `file:///abs/dir` naming an existing directory.
    pub fn new(import_roots: Vec<String>, buckets: Vec<String>) -> Result<Self, AccessConfigError> {
        // The artifact root is the run's; any valid one checks the flags.
        UriPolicy::new("s3://check/root", import_roots.clone(), buckets.clone())
            .map_err(AccessConfigError)?;
        let mut resolved_roots = Vec::new();
        for r in &import_roots {
            let path = r.strip_prefix("file://").unwrap_or(r);
            let real = std::fs::canonicalize(path).map_err(|e| {
                AccessConfigError(format!("--import-root {r}: cannot resolve {path}: {e}"))
            })?;
            if !real.is_dir() {
                return Err(AccessConfigError(format!(
                    "--import-root {r}: {} is not a directory",
                    real.display()
                )));
            }
            resolved_roots.push(real);
        }
        Ok(UriAccess {
            import_roots,
            resolved_roots,
            buckets,
        })
    }

    fn policy(&self, pipeline_root: &str) -> Result<UriPolicy, String> {
        UriPolicy::new(
            pipeline_root,
            self.import_roots.clone(),
            self.buckets.clone(),
        )
        .map_err(|e| format!("the step's {e}"))
    }

    /// `Ok` when this agent may download `uri` for a run whose artifact root is
    /// `pipeline_root`. Reads the file system (blocking).
    pub fn check_download(&self, uri: &str, pipeline_root: &str) -> Result<(), String> {
        self.policy(pipeline_root)?
            .check(uri)
            .map_err(|e| format!("{e} (this agent's rule)"))?;
        let Some(path) = uri.strip_prefix("file://") else {
            return Ok(());
        };
        let mut roots = self.resolved_roots.clone();
        if let Some(r) = pipeline_root.strip_prefix("file://") {
            if let Ok(real) = std::fs::canonicalize(r) {
                roots.push(real);
            }
        }
        let real = match std::fs::canonicalize(path) {
            Ok(real) => real,
            // Nothing there: the download says so.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{uri}: cannot resolve {path}: {e}")),
        };
        let Some(root) = roots.iter().find(|r| real.starts_with(r)) else {
            return Err(format!(
                "{uri} resolves to {}, outside the import roots and the artifact root (a \
                 symbolic link leads out)",
                real.display()
            ));
        };
        if real.is_dir() {
            check_links_below(uri, &real, root)?;
        }
        Ok(())
    }

    /// `Ok` when this agent may upload to `uri`: under the run's artifact root, by components.
    pub fn check_upload(&self, uri: &str, pipeline_root: &str) -> Result<(), String> {
        let only_root = UriPolicy::new(pipeline_root, Vec::new(), Vec::new())
            .map_err(|e| format!("the step's {e}"))?;
        match only_root.check(uri) {
            Ok(()) if uri.starts_with("s3://") || uri.starts_with("file://") => Ok(()),
            Ok(()) => Err(format!(
                "{uri} is not an s3:// or file:// URI under the artifact root {pipeline_root}"
            )),
            Err(_) => Err(format!(
                "{uri} is outside the run's artifact root {pipeline_root}"
            )),
        }
    }
}

/// Every symbolic link below the directory `dir` must resolve under `root`.
fn check_links_below(uri: &str, dir: &Path, root: &Path) -> Result<(), String> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{uri}: {}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{uri}: {}: {e}", d.display()))?;
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                return Err(format!(
                    "{uri}: more than {MAX_WALK_ENTRIES} entries below {}",
                    dir.display()
                ));
            }
            let p = entry.path();
            let ft = entry
                .file_type()
                .map_err(|e| format!("{uri}: {}: {e}", p.display()))?;
            if ft.is_symlink() {
                let real = std::fs::canonicalize(&p).ok();
                if !real.as_ref().is_some_and(|r| r.starts_with(root)) {
                    return Err(format!(
                        "{uri}: the symbolic link {} leads outside {}",
                        p.display(),
                        root.display()
                    ));
                }
            } else if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_uri(p: &Path) -> String {
        format!("file://{}", p.display())
    }

    #[test]
    fn downloads_need_the_artifact_root_an_import_root_or_an_allowed_bucket() {
        let roots = tempfile::tempdir().unwrap();
        let data = roots.path().join("data");
        let art = roots.path().join("art");
        let other = roots.path().join("data2");
        for d in [&data, &art, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(data.join("in.csv"), "x").unwrap();
        std::fs::write(other.join("secret"), "x").unwrap();
        let a = UriAccess::new(vec![file_uri(&data)], vec!["datasets".into()]).unwrap();
        let art_root = file_uri(&art);
        assert!(a
            .check_download(&file_uri(&data.join("in.csv")), &art_root)
            .is_ok());
        assert!(a
            .check_download(&file_uri(&art.join("r/t/attempt-1/m")), &art_root)
            .is_ok());
        let e = a
            .check_download(&file_uri(&other.join("secret")), &art_root)
            .unwrap_err();
        assert!(e.contains("outside the import roots"), "{e}");
        assert!(a.check_download("file:///etc/shadow", &art_root).is_err());
        assert!(a.check_download("s3://datasets/k", &art_root).is_ok());
        let e = a.check_download("s3://elsewhere/k", &art_root).unwrap_err();
        assert!(e.contains("see --allow-bucket"), "{e}");
        assert!(a
            .check_download(&format!("{}/../data2/secret", file_uri(&data)), &art_root)
            .is_err());
    }

    #[test]
    fn symbolic_links_leading_out_of_a_root_are_refused() {
        let roots = tempfile::tempdir().unwrap();
        let data = roots.path().join("data");
        let outside = roots.path().join("outside");
        std::fs::create_dir_all(data.join("dir/sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::fs::write(data.join("dir/ok"), "x").unwrap();
        let a = UriAccess::new(vec![file_uri(&data)], vec![]).unwrap();
        let art = "s3://art/root";
        assert!(a.check_download(&file_uri(&data.join("dir")), art).is_ok());
        // A link as the input itself.
        std::os::unix::fs::symlink(outside.join("secret"), data.join("link")).unwrap();
        let e = a
            .check_download(&file_uri(&data.join("link")), art)
            .unwrap_err();
        assert!(e.contains("a symbolic link leads out"), "{e}");
        // A link inside a directory input.
        std::os::unix::fs::symlink(&outside, data.join("dir/sub/escape")).unwrap();
        let e = a
            .check_download(&file_uri(&data.join("dir")), art)
            .unwrap_err();
        assert!(e.contains("leads outside"), "{e}");
        // A link that stays inside is fine.
        std::fs::remove_file(data.join("dir/sub/escape")).unwrap();
        std::os::unix::fs::symlink(data.join("dir/ok"), data.join("dir/sub/fine")).unwrap();
        assert!(a.check_download(&file_uri(&data.join("dir")), art).is_ok());
    }

    #[test]
    fn uploads_go_under_the_artifact_root_only() {
        let a = UriAccess::default();
        let root = "file:///var/gantry/artifacts";
        assert!(a
            .check_upload("file:///var/gantry/artifacts/r/t/attempt-1/m", root)
            .is_ok());
        for bad in [
            "file:///etc/cron.d/x",
            "file:///var/gantry/artifacts2/x",
            "file:///var/gantry/artifacts/../x",
            "s3://b/x",
            "gs://b/x",
        ] {
            let e = a.check_upload(bad, root).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(UriAccess::new(vec!["/data".into()], vec![]).is_err());
        assert!(UriAccess::new(vec!["file:///no/such/dir/here".into()], vec![]).is_err());
        assert!(UriAccess::new(vec![], vec!["a/b".into()]).is_err());
    }
}
