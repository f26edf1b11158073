//! Which artifact URIs a run may name: the URI policy the coordinator applies at submit (and
//! to importers when they run) and agents apply again before they download.
//!
//! A URI a submitter controls (an importer's `artifactUri`, constant or from a parameter, and
//! `gantry run submit -a NAME=URI`) makes an agent read it on a host of the fleet with the
//! agent's own rights. So:
//!
//! - `file:///path` is allowed only under an **import root** (`--import-root file:///dir`,
//!   none by default) or under the cluster's artifact root when that is a `file://` root;
//! - `s3://bucket/key` is allowed only under the cluster's **artifact root** or in a bucket
//!   the operator lists (`--allow-bucket NAME`);
//! - URIs in schemes the agents cannot read (`gs://`, `https://`) are not downloaded by
//!   anyone (the step gets the URI as text, as Kubeflow's launcher does): the policy lets them
//!   through.
//!
//! "Under" compares path components, never string prefixes (`file:///data2` is not under
//! `file:///data`); empty segments are ignored; a `.` or `..` segment, also percent-encoded
//! (`%2e%2e`), is refused outright rather than normalised. Pure: no file system is consulted
//! (agents check again after resolving symbolic links).

use serde::{Deserialize, Serialize};

/// The URIs a run may read from. Stored with each run, so that every replica judges an
/// importer's run-time URI the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UriPolicy {
    /// `file:///abs/dir` roots submitters may import from.
    #[serde(default)]
    pub import_roots: Vec<String>,
    /// S3 buckets submitters may import from, besides the artifact root's prefix.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// The cluster's artifact root (`s3://bucket/prefix` or `file:///dir`).
    pub artifact_root: String,
}

/// Longest URI the policy looks at.
pub const MAX_URI_BYTES: usize = 4096;

/// A URI split into what the policy compares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Loc<'a> {
    File(Vec<&'a str>),
    S3 { bucket: &'a str, key: Vec<&'a str> },
}

/// Why a URI is malformed for the policy (a `..` segment, no bucket, a host in a `file://`).
fn parse(uri: &str) -> Result<Option<Loc<'_>>, String> {
    if uri.len() > MAX_URI_BYTES {
        return Err(format!(
            "is {} bytes long (at most {MAX_URI_BYTES})",
            uri.len()
        ));
    }
    if uri.chars().any(char::is_control) {
        return Err("holds a control character".into());
    }
    let (loc, path) = if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err("is not file:///absolute/path (a file URI names no host)".into());
        }
        (Loc::File(segments(rest)), rest)
    } else if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("names no bucket".into());
        }
        (
            Loc::S3 {
                bucket,
                key: segments(key),
            },
            key,
        )
    } else {
        return Ok(None);
    };
    if path.split('/').any(is_dot_segment) {
        return Err("has a '.' or '..' segment".into());
    }
    Ok(Some(loc))
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// `.` or `..`, also percent-encoded.
fn is_dot_segment(seg: &str) -> bool {
    let lower = seg.to_ascii_lowercase().replace("%2e", ".");
    lower == "." || lower == ".."
}

/// `inner` is `root` or below it, by components.
fn under(inner: &Loc<'_>, root: &Loc<'_>) -> bool {
    match (inner, root) {
        (Loc::File(p), Loc::File(r)) => p.starts_with(r),
        (
            Loc::S3 { bucket, key },
            Loc::S3 {
                bucket: rb,
                key: rk,
            },
        ) => bucket == rb && key.starts_with(rk),
        _ => false,
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none configured".to_string()
    } else {
        items.join(", ")
    }
}

/// Checks one configured root: `what` names the flag in the error.
fn check_root(what: &str, root: &str, scheme: &str) -> Result<(), String> {
    match parse(root) {
        Ok(Some(_)) if root.starts_with(scheme) => Ok(()),
        Ok(_) => Err(format!("{what} {root:?}: expected {scheme}…")),
        Err(e) => Err(format!("{what} {root:?} {e}")),
    }
}

impl UriPolicy {
    /// A policy, its roots checked: import roots `file:///abs/dir`, bucket names without `/`,
    /// and an artifact root in `s3://` or `file://`.
    pub fn new(
        artifact_root: impl Into<String>,
        import_roots: Vec<String>,
        buckets: Vec<String>,
    ) -> Result<Self, String> {
        let artifact_root = artifact_root.into();
        for r in &import_roots {
            check_root("--import-root", r, "file:///")?;
        }
        for b in &buckets {
            if b.is_empty() || b.contains('/') || b.chars().any(|c| c.is_control() || c == ' ') {
                return Err(format!(
                    "--allow-bucket {b:?}: expected a bucket name (no '/', no spaces)"
                ));
            }
        }
        match parse(&artifact_root) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(format!(
                    "artifact root {artifact_root:?}: expected s3://bucket/prefix or file:///dir"
                ))
            }
            Err(e) => return Err(format!("artifact root {artifact_root:?} {e}")),
        }
        Ok(UriPolicy {
            import_roots,
            buckets,
            artifact_root,
        })
    }

    /// `Ok` when a run may read `uri`; otherwise why not, naming the URI and the rule:
    /// `file:///etc/shadow is outside the import roots (none configured; see --import-root)`.
    pub fn check(&self, uri: &str) -> Result<(), String> {
        let loc = match parse(uri) {
            Ok(Some(loc)) => loc,
            // Not a scheme agents read: nothing is fetched.
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("{uri} {e}")),
        };
        if let Ok(Some(root)) = parse(&self.artifact_root) {
            if under(&loc, &root) {
                return Ok(());
            }
        }
        match &loc {
            Loc::File(_) => {
                let inside = self
                    .import_roots
                    .iter()
                    .filter_map(|r| parse(r).ok().flatten())
                    .any(|r| under(&loc, &r));
                if inside {
                    Ok(())
                } else {
                    Err(format!(
                        "{uri} is outside the import roots ({}; see --import-root)",
                        list_or_none(&self.import_roots)
                    ))
                }
            }
            Loc::S3 { bucket, .. } => {
                if self.buckets.iter().any(|b| b == bucket) {
                    Ok(())
                } else {
                    Err(format!(
                        "{uri} is outside the artifact root {} and the allowed buckets ({}; see \
                         --allow-bucket)",
                        self.artifact_root,
                        list_or_none(&self.buckets)
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(roots: &[&str], buckets: &[&str], artifact_root: &str) -> UriPolicy {
        UriPolicy::new(
            artifact_root,
            roots.iter().map(|s| s.to_string()).collect(),
            buckets.iter().map(|s| s.to_string()).collect(),
        )
        .expect("valid policy")
    }

    #[test]
    fn file_uris_need_an_import_root_and_none_is_configured_by_default() {
        let p = policy(&[], &[], "s3://art/root");
        assert_eq!(
            p.check("file:///etc/shadow").unwrap_err(),
            "file:///etc/shadow is outside the import roots (none configured; see --import-root)"
        );
        let p = policy(&["file:///data", "file:///srv/in/"], &[], "s3://art/root");
        assert!(p.check("file:///data/x.csv").is_ok());
        assert!(p.check("file:///data").is_ok());
        assert!(p.check("file:///data//sub/x").is_ok());
        assert!(p.check("file:///srv/in/y").is_ok());
        let e = p.check("file:///etc/passwd").unwrap_err();
        assert!(
            e.contains("outside the import roots (file:///data, file:///srv/in/;"),
            "{e}"
        );
    }

    #[test]
    fn roots_compare_by_components_not_string_prefix() {
        let p = policy(&["file:///data"], &[], "s3://art/root");
        assert!(p.check("file:///data2/x").is_err());
        assert!(p.check("file:///dat").is_err());
        let p = policy(&[], &[], "s3://art/root");
        assert!(p.check("s3://art/root/run/x").is_ok());
        assert!(p.check("s3://art/rootless/x").is_err());
        assert!(p.check("s3://art/other").is_err());
        assert!(p.check("s3://artifacts/root/x").is_err());
    }

    #[test]
    fn dot_segments_are_refused_even_encoded() {
        let p = policy(&["file:///data"], &["in"], "s3://art/root");
        for bad in [
            "file:///data/../etc/shadow",
            "file:///data/./x",
            "file:///data/%2e%2e/etc/shadow",
            "file:///data/%2E./etc",
            "s3://art/root/../../secrets",
            "s3://in/..",
        ] {
            let e = p.check(bad).unwrap_err();
            assert!(e.contains("'..' segment"), "{bad}: {e}");
            assert!(e.starts_with(bad), "{e}");
        }
    }

    #[test]
    fn s3_needs_the_artifact_root_or_an_allowed_bucket() {
        let p = policy(&[], &[], "s3://art/root");
        assert_eq!(
            p.check("s3://other/k").unwrap_err(),
            "s3://other/k is outside the artifact root s3://art/root and the allowed buckets \
             (none configured; see --allow-bucket)"
        );
        let p = policy(&[], &["datasets", "other"], "s3://art/root");
        assert!(p.check("s3://other/k").is_ok());
        assert!(p.check("s3://datasets/a/b").is_ok());
        assert!(p.check("s3://datasets2/a").is_err());
        assert!(p.check("s3:///k").unwrap_err().contains("names no bucket"));
    }

    #[test]
    fn a_file_artifact_root_is_readable_and_other_schemes_pass() {
        let p = policy(&[], &[], "file:///var/gantry/artifacts");
        assert!(p
            .check("file:///var/gantry/artifacts/run-1/t/attempt-1/m")
            .is_ok());
        assert!(p.check("file:///var/gantry/other").is_err());
        assert!(p.check("s3://art/x").is_err());
        // Agents do not fetch these: the step gets the text.
        assert!(p.check("gs://bucket/x").is_ok());
        assert!(p.check("https://example.com/x").is_ok());
        // A host in a file URI is refused, as is an endless or odd URI.
        assert!(p.check("file://host/etc").is_err());
        assert!(p
            .check(&format!("file:///{}", "a".repeat(MAX_URI_BYTES)))
            .is_err());
        assert!(p.check("file:///data/x\n").is_err());
    }

    #[test]
    fn bad_roots_are_refused() {
        assert!(UriPolicy::new("s3://a/r", vec!["/data".into()], vec![]).is_err());
        assert!(UriPolicy::new("s3://a/r", vec!["s3://b/x".into()], vec![]).is_err());
        assert!(UriPolicy::new("s3://a/r", vec!["file:///a/../b".into()], vec![]).is_err());
        assert!(UriPolicy::new("s3://a/r", vec![], vec!["a/b".into()]).is_err());
        assert!(UriPolicy::new("gs://a/r", vec![], vec![]).is_err());
        assert!(UriPolicy::new("s3://a/r", vec!["file:///data".into()], vec!["b".into()]).is_ok());
    }
}
