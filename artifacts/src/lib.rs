//! Artifact transfer through object_store.
//!
//! URIs: `s3://bucket/key` and `file:///absolute/path`. Other schemes (`gs://`, `http://`,
//! relative `file://`) are refused with [`ArtifactError::Scheme`].
//!
//! S3 settings come from the usual variables, read by `AmazonS3Builder::from_env()`:
//! `AWS_ENDPOINT_URL` or `AWS_ENDPOINT`, `AWS_REGION` / `AWS_DEFAULT_REGION`,
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`. Requests are
//! path-style (`endpoint/bucket/key`), which MinIO, Garage and s3s serve; an `http://` endpoint
//! is allowed without further ado. [`S3Settings`] overrides them explicitly (tests).
//!
//! A "file" artifact is one object at its URI; a "directory" artifact is every object below
//! `URI/`, keyed by its path relative to the directory.
//!
//! Memory: uploads go through a multipart upload in [`PART_SIZE`] parts with at most
//! [`PARTS_IN_FLIGHT`] parts in flight, reading the file [`READ_CHUNK`] at a time, so a
//! multi-gigabyte output costs about `(PARTS_IN_FLIGHT + 1) × PART_SIZE` of memory; files
//! smaller than one part are sent in one request. Downloads stream to disk chunk by chunk.

use std::collections::HashMap;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of one multipart part (S3 wants at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once for one file.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Bytes read from the local file at a time.
pub const READ_CHUNK: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("unsupported artifact URI {0:?}: expected s3://bucket/key or file:///absolute/path")]
    Scheme(String),
    #[error("artifact URI {uri:?} is outside the store root {root:?}")]
    OutsideRoot { uri: String, root: String },
    #[error("artifact {0} not found (no object at that URI and none below it)")]
    NotFound(String),
    #[error("artifact {uri}: {message}")]
    Store { uri: String, message: String },
    #[error("{path}: {message}")]
    Local { path: String, message: String },
}

fn store_err(uri: &str, e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Store {
        uri: uri.to_string(),
        message: e.to_string(),
    }
}

fn local_err(path: &FsPath, e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Local {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// S3 connection settings; every `None` falls back to the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl S3Settings {
    fn builder(&self, bucket: &str) -> AmazonS3Builder {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = self.endpoint.clone().or_else(|| {
            ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        });
        if let Some(ep) = &endpoint {
            b = b.with_endpoint(ep.trim_end_matches('/'));
            if ep.starts_with("http://") {
                b = b.with_allow_http(true);
            }
        }
        // Path-style requests: `endpoint/bucket/key`.
        b = b.with_virtual_hosted_style_request(false);
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        if let Some(k) = &self.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &self.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        b
    }
}

/// A parsed artifact URI: which store, and the object path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    S3 { bucket: String, key: String },
    File { path: String },
}

fn parse_uri(uri: &str) -> Result<Location, ArtifactError> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ArtifactError::Scheme(uri.to_string()));
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            key: key.trim_matches('/').to_string(),
        })
    } else if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(ArtifactError::Scheme(uri.to_string()));
        }
        Ok(Location::File {
            path: rest.trim_matches('/').to_string(),
        })
    } else {
        Err(ArtifactError::Scheme(uri.to_string()))
    }
}

/// Whether object_store can address `uri` at all (the launcher skips downloading inputs whose
/// URI it cannot, as Kubeflow's launcher does).
pub fn is_supported_uri(uri: &str) -> bool {
    parse_uri(uri).is_ok()
}

fn object_path(uri: &str, key: &str) -> Result<ObjPath, ArtifactError> {
    let p = ObjPath::parse(key).map_err(|e| store_err(uri, e))?;
    if p.parts().any(|part| {
        let s = part.as_ref();
        s == "." || s == ".."
    }) {
        return Err(store_err(uri, "refusing a key with '.' or '..' segments"));
    }
    Ok(p)
}

/// One object store and the root URI that addresses it (`s3://bucket/prefix`,
/// `file:///dir`). Resolves any artifact URI under that root to an object path.
pub struct ArtifactStore {
    root: String,
    /// The root's location, to check that URIs fall under it.
    root_loc: Location,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl ArtifactStore {
    /// `file:///abs/dir` or `s3://bucket[/prefix]`, S3 settings from the environment.
    pub fn from_root(root: &str) -> Result<Self, ArtifactError> {
        Self::from_root_with(root, &S3Settings::default())
    }

    pub fn from_root_with(root: &str, s3: &S3Settings) -> Result<Self, ArtifactError> {
        let root_loc = parse_uri(root)?;
        let store: Arc<dyn ObjectStore> = match &root_loc {
            Location::S3 { bucket, .. } => {
                Arc::new(s3.builder(bucket).build().map_err(|e| store_err(root, e))?)
            }
            // Deleting an artifact also removes the directories it leaves empty.
            Location::File { .. } => Arc::new(LocalFileSystem::new().with_automatic_cleanup(true)),
        };
        Ok(ArtifactStore {
            root: root.trim_end_matches('/').to_string(),
            root_loc,
            store,
        })
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The object path of `uri`, which must lie under this store's root.
    pub fn resolve(&self, uri: &str) -> Result<ObjPath, ArtifactError> {
        let outside = || ArtifactError::OutsideRoot {
            uri: uri.to_string(),
            root: self.root.clone(),
        };
        let under = |prefix: &str, key: &str| {
            prefix.is_empty() || key == prefix || key.starts_with(&format!("{prefix}/"))
        };
        match (parse_uri(uri)?, &self.root_loc) {
            (
                Location::S3 { bucket, key },
                Location::S3 {
                    bucket: rb,
                    key: prefix,
                },
            ) if &bucket == rb && under(prefix, &key) => object_path(uri, &key),
            (Location::File { path }, Location::File { path: prefix }) if under(prefix, &path) => {
                object_path(uri, &path)
            }
            _ => Err(outside()),
        }
    }

    /// Downloads the object at `uri` to the file `dest`, or, when there are objects below
    /// `uri/`, all of them into the directory `dest`. Returns the bytes written.
    ///
    /// The listing comes first: some servers answer a GET of a "directory" key with an error
    /// other than 404 (s3s-fs: 500, retried for seconds).
    pub async fn download(&self, uri: &str, dest: &FsPath) -> Result<u64, ArtifactError> {
        let path = self.resolve(uri)?;
        let mut listing = self.store.list(Some(&path));
        let first = match listing.next().await {
            None | Some(Err(object_store::Error::NotFound { .. })) => None,
            Some(Err(e)) => return Err(store_err(uri, e)),
            Some(Ok(meta)) if meta.location == path => None,
            Some(Ok(meta)) => Some(meta),
        };
        let Some(first) = first else {
            return match self.store.get(&path).await {
                Ok(got) => write_stream(got.into_stream(), dest, uri).await,
                Err(object_store::Error::NotFound { .. }) => {
                    Err(ArtifactError::NotFound(uri.to_string()))
                }
                Err(e) => Err(store_err(uri, e)),
            };
        };
        let mut total = self.download_member(uri, &path, first, dest).await?;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| store_err(uri, e))?;
            total += self.download_member(uri, &path, meta, dest).await?;
        }
        Ok(total)
    }

    /// One object of a directory artifact, to its place below `dest`.
    async fn download_member(
        &self,
        uri: &str,
        dir: &ObjPath,
        meta: object_store::ObjectMeta,
        dest: &FsPath,
    ) -> Result<u64, ArtifactError> {
        let Some(parts) = meta.location.prefix_match(dir) else {
            return Ok(0);
        };
        let mut target = dest.to_path_buf();
        for part in parts {
            let part = part.as_ref();
            let p = FsPath::new(part);
            let mut comps = p.components();
            match (comps.next(), comps.next()) {
                (Some(Component::Normal(_)), None) => target.push(p),
                _ => {
                    return Err(store_err(
                        uri,
                        format!("refusing object key segment {part:?} below the artifact"),
                    ))
                }
            }
        }
        if target == dest {
            return Ok(0);
        }
        let got = self
            .store
            .get(&meta.location)
            .await
            .map_err(|e| store_err(uri, e))?;
        write_stream(got.into_stream(), &target, uri).await
    }

    /// Uploads the file `src` to `uri`, or every file below the directory `src` to
    /// `uri/<relative path>`. Symbolic links are never followed: a link at `src` is refused, a
    /// link inside a directory is skipped (with a warning). Returns the bytes uploaded.
    pub async fn upload(&self, src: &FsPath, uri: &str) -> Result<u64, ArtifactError> {
        let meta = tokio::fs::symlink_metadata(src)
            .await
            .map_err(|e| local_err(src, e))?;
        if meta.file_type().is_symlink() {
            return Err(local_err(src, "is a symbolic link; refusing to follow it"));
        }
        if meta.is_file() {
            let path = self.resolve(uri)?;
            return upload_file(&self.store, path, src, uri).await;
        }
        if !meta.is_dir() {
            return Err(local_err(src, "is neither a file nor a directory"));
        }
        let base = uri.trim_end_matches('/');
        self.resolve(base)?;
        let mut total = 0;
        let mut stack: Vec<PathBuf> = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let mut entries = tokio::fs::read_dir(&dir)
                .await
                .map_err(|e| local_err(&dir, e))?;
            while let Some(entry) = entries.next_entry().await.map_err(|e| local_err(&dir, e))? {
                let p = entry.path();
                let ft = entry.file_type().await.map_err(|e| local_err(&p, e))?;
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    let rel = p.strip_prefix(src).map_err(|e| local_err(&p, e))?;
                    let rel: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    let child_uri = format!("{base}/{}", rel.join("/"));
                    let path = self.resolve(&child_uri)?;
                    total += upload_file(&self.store, path, &p, &child_uri).await?;
                } else {
                    tracing::warn!(path = %p.display(), "not uploading a symbolic link or special file");
                }
            }
        }
        Ok(total)
    }

    /// Deletes every object at or below `prefix` whose URI `keep` does not claim (an object is
    /// claimed when its URI or a directory URI above it is in `keep`). Returns how many were
    /// deleted and how many kept. A missing prefix deletes nothing.
    pub async fn delete_under(
        &self,
        prefix: &str,
        keep: &std::collections::BTreeSet<&str>,
    ) -> Result<(u64, u64), ArtifactError> {
        let path = self.resolve(prefix)?;
        let claimed = |uri: &str| {
            let mut at = uri;
            loop {
                if keep.contains(at) {
                    return true;
                }
                match at.rsplit_once('/') {
                    Some((up, _)) if up.len() >= prefix.len() => at = up,
                    _ => return false,
                }
            }
        };
        let (mut deleted, mut kept) = (0, 0);
        let mut listing = self.store.list(Some(&path));
        let mut doomed = Vec::new();
        while let Some(item) = listing.next().await {
            let meta = match item {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(store_err(prefix, e)),
            };
            let uri = self.uri_of(&meta.location);
            if claimed(&uri) {
                kept += 1;
            } else {
                doomed.push(meta.location);
            }
        }
        drop(listing);
        // An artifact may be one object at `prefix` itself, which a listing (of what is below)
        // leaves out. Asked only when nothing is below: then `prefix` names no directory, which
        // some S3 servers answer a HEAD for with an error rather than 404.
        if kept == 0 && doomed.is_empty() {
            match self.store.head(&path).await {
                Ok(_) if claimed(prefix) => kept += 1,
                Ok(meta) => doomed.push(meta.location),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(prefix, e)),
            }
        }
        for location in doomed {
            match self.store.delete(&location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(store_err(prefix, e)),
            }
        }
        Ok((deleted, kept))
    }

    /// The URI of an object path of this store.
    fn uri_of(&self, location: &ObjPath) -> String {
        match &self.root_loc {
            Location::S3 { bucket, .. } => format!("s3://{bucket}/{location}"),
            Location::File { .. } => format!("file:///{location}"),
        }
    }

    /// Whether an object exists at `uri` or below it.
    pub async fn exists(&self, uri: &str) -> Result<bool, ArtifactError> {
        let path = self.resolve(uri)?;
        let mut listing = self.store.list(Some(&path));
        match listing.next().await {
            Some(Ok(_)) => return Ok(true),
            Some(Err(object_store::Error::NotFound { .. })) | None => {}
            Some(Err(e)) => return Err(store_err(uri, e)),
        }
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(uri, e)),
        }
    }
}

async fn write_stream(
    mut stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    dest: &FsPath,
    uri: &str,
) -> Result<u64, ArtifactError> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| local_err(parent, e))?;
    }
    let mut f = tokio::fs::File::create(dest)
        .await
        .map_err(|e| local_err(dest, e))?;
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| store_err(uri, e))?;
        f.write_all(&chunk).await.map_err(|e| local_err(dest, e))?;
        total += chunk.len() as u64;
    }
    f.flush().await.map_err(|e| local_err(dest, e))?;
    Ok(total)
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the file.
async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let m = f.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n)
}

async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    path: ObjPath,
    src: &FsPath,
    uri: &str,
) -> Result<u64, ArtifactError> {
    let mut file = tokio::fs::File::open(src)
        .await
        .map_err(|e| local_err(src, e))?;
    let len = file.metadata().await.map_err(|e| local_err(src, e))?.len();
    if len < PART_SIZE as u64 {
        // One request; the whole (small) file in memory.
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf)
            .await
            .map_err(|e| local_err(src, e))?;
        let n = buf.len() as u64;
        store
            .put(&path, buf.into())
            .await
            .map_err(|e| store_err(uri, e))?;
        return Ok(n);
    }
    let upload = store
        .put_multipart(&path)
        .await
        .map_err(|e| store_err(uri, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total = 0u64;
    let outcome: Result<(), ArtifactError> = async {
        loop {
            let n = read_full(&mut file, &mut buf)
                .await
                .map_err(|e| local_err(src, e))?;
            if n == 0 {
                return Ok(());
            }
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| store_err(uri, e))?;
            writer.write(&buf[..n]);
            total += n as u64;
        }
    }
    .await;
    match outcome {
        Ok(()) => {
            writer.finish().await.map_err(|e| store_err(uri, e))?;
            Ok(total)
        }
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(uri, error = %abort, "could not abort the multipart upload");
            }
            Err(e)
        }
    }
}

/// Stores by bucket (and one for the local filesystem), built on first use: the launcher's
/// way to reach any artifact URI.
#[derive(Default)]
pub struct ArtifactStores {
    s3: S3Settings,
    stores: Mutex<HashMap<String, Arc<ArtifactStore>>>,
}

impl std::fmt::Debug for ArtifactStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStores")
            .field("s3", &self.s3.endpoint)
            .finish_non_exhaustive()
    }
}

impl ArtifactStores {
    /// S3 settings from the environment.
    pub fn from_env() -> Self {
        Self::default()
    }

    pub fn new(s3: S3Settings) -> Self {
        ArtifactStores {
            s3,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// The store holding `uri`.
    pub fn store_for(&self, uri: &str) -> Result<Arc<ArtifactStore>, ArtifactError> {
        let root = match parse_uri(uri)? {
            Location::S3 { bucket, .. } => format!("s3://{bucket}"),
            Location::File { .. } => "file:///".to_string(),
        };
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = stores.get(&root) {
            return Ok(s.clone());
        }
        let s = Arc::new(ArtifactStore::from_root_with(&root, &self.s3)?);
        stores.insert(root, s.clone());
        Ok(s)
    }

    pub async fn download(&self, uri: &str, dest: &FsPath) -> Result<u64, ArtifactError> {
        self.store_for(uri)?.download(uri, dest).await
    }

    pub async fn upload(&self, src: &FsPath, uri: &str) -> Result<u64, ArtifactError> {
        self.store_for(uri)?.upload(src, uri).await
    }

    /// See [`ArtifactStore::delete_under`].
    pub async fn delete_under(
        &self,
        prefix: &str,
        keep: &std::collections::BTreeSet<&str>,
    ) -> Result<(u64, u64), ArtifactError> {
        self.store_for(prefix)?.delete_under(prefix, keep).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_uri(p: &FsPath) -> String {
        format!("file://{}", p.display())
    }

    #[tokio::test]
    async fn files_and_directories_round_trip_through_a_file_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let work = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::from_root(&file_uri(root.path())).expect("store");
        let src = work.path().join("model.bin");
        std::fs::write(&src, b"weights").expect("write");
        let uri = format!("{}/run/task/attempt-1/model", file_uri(root.path()));
        assert_eq!(store.upload(&src, &uri).await.expect("upload"), 7);
        assert!(store.exists(&uri).await.expect("exists"));
        let back = work.path().join("in/model");
        assert_eq!(store.download(&uri, &back).await.expect("download"), 7);
        assert_eq!(std::fs::read(&back).expect("read"), b"weights");

        let dir = work.path().join("dir");
        std::fs::create_dir_all(dir.join("sub/deeper")).expect("mkdir");
        std::fs::write(dir.join("a.txt"), b"a").expect("write");
        std::fs::write(dir.join("sub/deeper/b.txt"), b"bb").expect("write");
        let duri = format!("{}/run/task/attempt-1/dir", file_uri(root.path()));
        assert_eq!(store.upload(&dir, &duri).await.expect("upload dir"), 3);
        let dback = work.path().join("in/dir");
        assert_eq!(
            store.download(&duri, &dback).await.expect("download dir"),
            3
        );
        assert_eq!(std::fs::read(dback.join("a.txt")).expect("read"), b"a");
        assert_eq!(
            std::fs::read(dback.join("sub/deeper/b.txt")).expect("read"),
            b"bb"
        );
    }

    #[tokio::test]
    async fn deleting_under_a_prefix_keeps_what_is_claimed_and_nothing_outside() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = file_uri(root.path());
        let put = |rel: &str| {
            let p = root.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, rel).expect("write");
        };
        for rel in [
            "run1/a/attempt-1/model",
            "run1/a/attempt-1/dir/x.txt",
            "run1/a/attempt-1/dir/sub/y.txt",
            "run1/b/attempt-2/data",
            "run10/a/attempt-1/model",
            "run2/a/attempt-1/model",
        ] {
            put(rel);
        }
        let stores = ArtifactStores::from_env();
        let shared = format!("{r}/run1/a/attempt-1/dir");
        let keep: std::collections::BTreeSet<&str> = [shared.as_str()].into();
        let (deleted, kept) = stores
            .delete_under(&format!("{r}/run1"), &keep)
            .await
            .expect("delete");
        assert_eq!((deleted, kept), (2, 2));
        let left = |rel: &str| root.path().join(rel).exists();
        assert!(!left("run1/a/attempt-1/model") && !left("run1/b"));
        assert!(left("run1/a/attempt-1/dir/x.txt") && left("run1/a/attempt-1/dir/sub/y.txt"));
        // `run10` shares `run1`'s first characters, not its directory.
        assert!(left("run10/a/attempt-1/model") && left("run2/a/attempt-1/model"));
        // Nothing claimed: everything under the prefix goes, empty directories too.
        let none = std::collections::BTreeSet::new();
        let (deleted, kept) = stores
            .delete_under(&format!("{r}/run1"), &none)
            .await
            .expect("delete");
        assert_eq!((deleted, kept), (2, 0));
        assert!(!left("run1"));
        assert_eq!(
            stores
                .delete_under(&format!("{r}/run9"), &none)
                .await
                .expect("none"),
            (0, 0)
        );
        // An artifact that is one object: the URI names the object itself.
        let model = format!("{r}/run2/a/attempt-1/model");
        let claimed: std::collections::BTreeSet<&str> = [model.as_str()].into();
        assert_eq!(
            stores.delete_under(&model, &claimed).await.expect("kept"),
            (0, 1)
        );
        assert!(left("run2/a/attempt-1/model"));
        assert_eq!(
            stores.delete_under(&model, &none).await.expect("gone"),
            (1, 0)
        );
        assert!(!left("run2/a/attempt-1/model"));
    }

    #[tokio::test]
    async fn multipart_path_for_files_bigger_than_a_part() {
        let root = tempfile::tempdir().expect("tempdir");
        let work = tempfile::tempdir().expect("tempdir");
        let stores = ArtifactStores::from_env();
        let src = work.path().join("big");
        let data: Vec<u8> = (0..(PART_SIZE * 2 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&src, &data).expect("write");
        let uri = format!("{}/big", file_uri(root.path()));
        assert_eq!(
            stores.upload(&src, &uri).await.expect("upload"),
            data.len() as u64
        );
        assert_eq!(std::fs::read(root.path().join("big")).expect("read"), data);
        let back = work.path().join("back");
        stores.download(&uri, &back).await.expect("download");
        assert_eq!(std::fs::read(&back).expect("read"), data);
    }

    #[tokio::test]
    async fn clear_errors_for_missing_unsupported_and_outside() {
        let stores = ArtifactStores::from_env();
        let root = tempfile::tempdir().expect("tempdir");
        let missing = format!("{}/nope", file_uri(root.path()));
        let err = stores
            .download(&missing, &root.path().join("x"))
            .await
            .expect_err("missing");
        assert!(matches!(err, ArtifactError::NotFound(_)), "{err}");
        assert!(err.to_string().contains(&missing), "{err}");
        for bad in [
            "gs://b/k",
            "file://relative/x",
            "http://h/x",
            "s3:///k",
            "/abs/path",
        ] {
            assert!(
                matches!(stores.store_for(bad), Err(ArtifactError::Scheme(_))),
                "{bad}"
            );
            assert!(!is_supported_uri(bad));
        }
        let err = stores
            .upload(&root.path().join("absent"), &missing)
            .await
            .expect_err("absent");
        assert!(err.to_string().contains("absent"), "{err}");

        let store =
            ArtifactStore::from_root(&format!("{}/sub", file_uri(root.path()))).expect("store");
        let err = store
            .resolve(&format!("{}/other/x", file_uri(root.path())))
            .expect_err("outside");
        assert!(matches!(err, ArtifactError::OutsideRoot { .. }), "{err}");
        assert!(store
            .resolve(&format!("{}/subx/y", file_uri(root.path())))
            .is_err());
        assert!(store
            .resolve(&format!("{}/sub/../x", file_uri(root.path())))
            .is_err());
        assert!(store
            .resolve(&format!("{}/sub/y/z", file_uri(root.path())))
            .is_ok());
        let s3 = ArtifactStore::from_root("s3://bucket/prefix").expect("s3 store");
        assert!(s3.resolve("s3://bucket/prefix/a/b").is_ok());
        assert!(s3.resolve("s3://bucket/prefixed/a").is_err());
        assert!(s3.resolve("s3://other/prefix/a").is_err());
        assert!(s3.resolve("file:///prefix/a").is_err());
    }

    #[tokio::test]
    async fn symlinks_are_not_followed() {
        let root = tempfile::tempdir().expect("tempdir");
        let work = tempfile::tempdir().expect("tempdir");
        let secret = work.path().join("secret");
        std::fs::write(&secret, b"host secret").expect("write");
        let link = work.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).expect("symlink");
        let stores = ArtifactStores::from_env();
        let err = stores
            .upload(&link, &format!("{}/l", file_uri(root.path())))
            .await
            .expect_err("link");
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let dir = work.path().join("dir");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("ok"), b"ok").expect("write");
        std::os::unix::fs::symlink(&secret, dir.join("leak")).expect("symlink");
        let n = stores
            .upload(&dir, &format!("{}/d", file_uri(root.path())))
            .await
            .expect("upload");
        assert_eq!(n, 2);
        assert!(!root.path().join("d/leak").exists());
    }
}
