//! Artifact transfer through object_store: `s3://bucket/key` (endpoint, region and
//! credentials from the usual AWS variables) and `file:///abs/path`.
//!
//! Uploads stream through a bounded buffer (8 MiB parts, at most 4 in flight), so a step's
//! multi-gigabyte output never sits in the agent's memory.

use std::collections::HashMap;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

const PART_SIZE: usize = 8 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("unsupported artifact URI {0:?}: expected s3://bucket/key or file:///absolute/path")]
    Scheme(String),
    #[error("artifact {0} not found")]
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

/// Object stores by bucket (or one for the local filesystem), built on first use.
#[derive(Default)]
pub struct ArtifactStores {
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl ArtifactStores {
    fn store(
        &self,
        key: &str,
        build: impl FnOnce() -> Result<Arc<dyn ObjectStore>, ArtifactError>,
    ) -> Result<Arc<dyn ObjectStore>, ArtifactError> {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = stores.get(key) {
            return Ok(s.clone());
        }
        let s = build()?;
        stores.insert(key.to_string(), s.clone());
        Ok(s)
    }

    /// The store holding `uri` and the object path inside it.
    pub fn resolve(&self, uri: &str) -> Result<(Arc<dyn ObjectStore>, ObjPath), ArtifactError> {
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ArtifactError::Scheme(uri.to_string()));
            }
            let store = self.store(&format!("s3:{bucket}"), || {
                AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
                    .map_err(|e| store_err(uri, e))
            })?;
            let path = ObjPath::parse(key).map_err(|e| store_err(uri, e))?;
            Ok((store, path))
        } else if let Some(rest) = uri.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(ArtifactError::Scheme(uri.to_string()));
            }
            let store = self.store("file", || {
                Ok(Arc::new(LocalFileSystem::new()) as Arc<dyn ObjectStore>)
            })?;
            let path =
                ObjPath::parse(rest.trim_start_matches('/')).map_err(|e| store_err(uri, e))?;
            Ok((store, path))
        } else {
            Err(ArtifactError::Scheme(uri.to_string()))
        }
    }

    /// Downloads the object at `uri` to `dest`, or every object under `uri/` into the
    /// directory `dest` (a directory artifact).
    pub async fn download(&self, uri: &str, dest: &FsPath) -> Result<(), ArtifactError> {
        let (store, path) = self.resolve(uri)?;
        match store.get(&path).await {
            Ok(got) => write_stream(got.into_stream(), dest, uri).await,
            Err(object_store::Error::NotFound { .. }) => {
                let mut listing = store.list(Some(&path));
                let mut found = false;
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(|e| store_err(uri, e))?;
                    let rel: Vec<String> = match meta.location.prefix_match(&path) {
                        Some(parts) => parts.map(|p| p.as_ref().to_string()).collect(),
                        None => continue,
                    };
                    let mut target = dest.to_path_buf();
                    for part in &rel {
                        let p = FsPath::new(part);
                        if p.components().any(|c| !matches!(c, Component::Normal(_))) {
                            return Err(store_err(
                                uri,
                                format!("refusing object key part {part:?}"),
                            ));
                        }
                        target.push(p);
                    }
                    let got = store
                        .get(&meta.location)
                        .await
                        .map_err(|e| store_err(uri, e))?;
                    write_stream(got.into_stream(), &target, uri).await?;
                    found = true;
                }
                if found {
                    Ok(())
                } else {
                    Err(ArtifactError::NotFound(uri.to_string()))
                }
            }
            Err(e) => Err(store_err(uri, e)),
        }
    }

    /// Uploads a file to `uri`, or a directory's files under `uri/`.
    pub async fn upload(&self, src: &FsPath, uri: &str) -> Result<u64, ArtifactError> {
        let meta = tokio::fs::metadata(src)
            .await
            .map_err(|e| local_err(src, e))?;
        if meta.is_file() {
            let (store, path) = self.resolve(uri)?;
            return upload_file(store, path, src, uri).await;
        }
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
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    let child_uri = format!("{}/{}", uri.trim_end_matches('/'), rel);
                    let (store, path) = self.resolve(&child_uri)?;
                    total += upload_file(store, path, &p, &child_uri).await?;
                }
            }
        }
        Ok(total)
    }
}

async fn write_stream(
    mut stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    dest: &FsPath,
    uri: &str,
) -> Result<(), ArtifactError> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| local_err(parent, e))?;
    }
    let mut f = tokio::fs::File::create(dest)
        .await
        .map_err(|e| local_err(dest, e))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| store_err(uri, e))?;
        f.write_all(&chunk).await.map_err(|e| local_err(dest, e))?;
    }
    f.flush().await.map_err(|e| local_err(dest, e))?;
    Ok(())
}

async fn upload_file(
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    src: &FsPath,
    uri: &str,
) -> Result<u64, ArtifactError> {
    let mut file = tokio::fs::File::open(src)
        .await
        .map_err(|e| local_err(src, e))?;
    let mut writer =
        BufWriter::with_capacity(store, path, PART_SIZE).with_max_concurrency(PARTS_IN_FLIGHT);
    let copied = match tokio::io::copy(&mut file, &mut writer).await {
        Ok(n) => n,
        Err(e) => {
            let _ = writer.abort().await;
            return Err(store_err(uri, e));
        }
    };
    writer.shutdown().await.map_err(|e| store_err(uri, e))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_and_directories_round_trip_through_a_file_root() {
        let root = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let stores = ArtifactStores::default();
        let src = work.path().join("model.bin");
        std::fs::write(&src, b"weights").unwrap();
        let uri = format!("file://{}/run/task/attempt-1/model", root.path().display());
        assert_eq!(stores.upload(&src, &uri).await.unwrap(), 7);
        let back = work.path().join("in/model");
        stores.download(&uri, &back).await.unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), b"weights");

        let dir = work.path().join("dir");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), b"a").unwrap();
        std::fs::write(dir.join("sub/b.txt"), b"b").unwrap();
        let duri = format!("file://{}/run/task/attempt-1/dir", root.path().display());
        assert_eq!(stores.upload(&dir, &duri).await.unwrap(), 2);
        let dback = work.path().join("in/dir");
        stores.download(&duri, &dback).await.unwrap();
        assert_eq!(std::fs::read(dback.join("sub/b.txt")).unwrap(), b"b");
    }

    #[tokio::test]
    async fn clear_errors_for_missing_and_unsupported() {
        let stores = ArtifactStores::default();
        let root = tempfile::tempdir().unwrap();
        let missing = format!("file://{}/nope", root.path().display());
        let err = stores
            .download(&missing, &root.path().join("x"))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::NotFound(_)), "{err}");
        assert!(matches!(
            stores.resolve("gs://b/k"),
            Err(ArtifactError::Scheme(_))
        ));
        assert!(matches!(
            stores.resolve("file://relative"),
            Err(ArtifactError::Scheme(_))
        ));
        let err = stores
            .upload(&root.path().join("absent"), &missing)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
