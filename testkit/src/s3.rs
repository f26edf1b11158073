//! A real S3-compatible server for a test: the one `GANTRY_TEST_S3_ENDPOINT` names (CI and
//! scripts/test.sh start one for the whole run), else an `s3s-fs` started here over a
//! temporary directory and stopped when the guard drops.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::net::{first_word, wait_for_line};
use crate::process::{program, Proc};

const ACCESS_KEY: &str = "gantry";
const SECRET_KEY: &str = "gantrysecret";
const REGION: &str = "us-east-1";
const BUCKET: &str = "gantry-artifacts";
/// What s3s-fs logs (at info, on stdout) once it serves; the URL follows.
const BANNER: &str = "server is running at ";

pub struct S3 {
    /// `http://host:port`.
    pub endpoint: String,
    /// A bucket that exists.
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// The directory s3s-fs serves, when known (objects are files under it): the one this
    /// guard started, or `GANTRY_TEST_S3_DIR`.
    pub root: Option<PathBuf>,
    _proc: Option<Proc>,
    _dir: Option<tempfile::TempDir>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3 {
    /// The server `GANTRY_TEST_S3_ENDPOINT` names (bucket `GANTRY_TEST_S3_BUCKET`, default
    /// `gantry-artifacts`, which must exist; credentials from `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), else an s3s-fs started here. An error when
    /// neither is available.
    pub fn start() -> Result<S3> {
        if let Some(endpoint) = var("GANTRY_TEST_S3_ENDPOINT") {
            return Ok(S3 {
                endpoint,
                bucket: var("GANTRY_TEST_S3_BUCKET").unwrap_or_else(|| BUCKET.into()),
                access_key: var("AWS_ACCESS_KEY_ID").unwrap_or_else(|| ACCESS_KEY.into()),
                secret_key: var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| SECRET_KEY.into()),
                region: var("AWS_REGION").unwrap_or_else(|| REGION.into()),
                root: std::env::var_os("GANTRY_TEST_S3_DIR").map(PathBuf::from),
                _proc: None,
                _dir: None,
            });
        }
        Self::start_at("127.0.0.1")
    }

    /// An s3s-fs started here, listening on `host` (an address of this machine that the
    /// processes under test reach, such as a Docker network's gateway), whatever
    /// `GANTRY_TEST_S3_ENDPOINT` says.
    pub fn start_at(host: &str) -> Result<S3> {
        let exe = program("s3s-fs").ok_or_else(|| {
            anyhow!(
                "no S3 server: set GANTRY_TEST_S3_ENDPOINT, or install s3s-fs with `cargo install \
                 --locked s3s-fs@0.14.1 --features binary` (scripts/test.sh and .ci/run do)"
            )
        })?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join(BUCKET))?;
        let log_path = dir.path().join("s3s-fs.log");
        let log = std::fs::File::create(&log_path)?;
        // Port 0, and the address from its log: a port picked here could be taken before
        // s3s-fs binds it.
        let child = Command::new(exe)
            .args(["--host", host, "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&data)
            .env("RUST_LOG", "s3s_fs=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .context("starting s3s-fs")?;
        let mut proc = Proc::new(child, "s3s-fs");
        let url = wait_for_line(
            &log_path,
            BANNER,
            1,
            &mut proc.child,
            "s3s-fs",
            Duration::from_secs(10),
        )?;
        Ok(S3 {
            endpoint: first_word(&url)?,
            bucket: BUCKET.into(),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            region: REGION.into(),
            root: Some(data),
            _proc: Some(proc),
            _dir: Some(dir),
        })
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn artifact_root(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix)
    }

    /// The environment a process needs to reach this server through object_store.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// Where the server keeps the object at `uri` (s3s-fs: a file per object).
    pub fn object_path(&self, uri: &str) -> Result<PathBuf> {
        let root = self.root.as_ref().ok_or_else(|| {
            anyhow!("the S3 server's directory is unknown (set GANTRY_TEST_S3_DIR)")
        })?;
        let key = uri
            .strip_prefix("s3://")
            .ok_or_else(|| anyhow!("not an s3 uri: {uri}"))?;
        Ok(root.join(key))
    }

    /// The bytes of an object, read from the server's directory.
    pub fn read_object(&self, uri: &str) -> Result<Vec<u8>> {
        std::fs::read(self.object_path(uri)?).with_context(|| format!("reading object {uri}"))
    }

    /// Deletes an object (a file artifact) from the server's directory.
    pub fn delete_object(&self, uri: &str) -> Result<()> {
        std::fs::remove_file(self.object_path(uri)?)
            .with_context(|| format!("deleting object {uri}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_listens_at_its_endpoint_and_serves_its_directory() {
        let s3 = S3::start().expect("an S3 server (scripts/test.sh installs s3s-fs)");
        let host_port = s3.endpoint.trim_start_matches("http://");
        std::net::TcpStream::connect(host_port).expect("the endpoint listens");
        assert_eq!(s3.artifact_root("p"), format!("s3://{}/p", s3.bucket));
        if let Some(root) = &s3.root {
            assert!(root.join(&s3.bucket).is_dir(), "the bucket exists");
            let path = s3
                .object_path(&format!("s3://{}/a/b", s3.bucket))
                .expect("path");
            assert_eq!(path, root.join(&s3.bucket).join("a/b"));
        }
    }
}
