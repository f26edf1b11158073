//! Pipeline uploads: the multipart body `kfp.Client` sends (one part, `uploadfile`), and the
//! package inside it: compiled YAML (or JSON), or a `.tar.gz` holding exactly one.

use std::io::Read;

use bytes::Bytes;

use super::HttpError;

/// The uploaded file: its name and its bytes.
pub struct Upload {
    pub filename: String,
    pub data: Bytes,
}

/// Reads the `uploadfile` part of a multipart body.
pub async fn read_multipart(headers: &http::HeaderMap, body: Bytes) -> Result<Upload, HttpError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        HttpError::bad(format!(
            "an upload is multipart/form-data with the file in part \"uploadfile\"; the \
             content type was {content_type:?}"
        ))
    })?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    while let Some(field) = parts
        .next_field()
        .await
        .map_err(|e| HttpError::bad(format!("the multipart body is malformed: {e}")))?
    {
        if field.name() != Some("uploadfile") {
            continue;
        }
        let filename = field.file_name().unwrap_or("pipeline.yaml").to_string();
        let data = field
            .bytes()
            .await
            .map_err(|e| HttpError::bad(format!("the uploaded file could not be read: {e}")))?;
        return Ok(Upload { filename, data });
    }
    Err(HttpError::bad(
        "the upload has no part named \"uploadfile\" (the file goes there)",
    ))
}

fn too_big(n: usize, filename: &str, limit: usize) -> HttpError {
    HttpError::bad(format!(
        "the pipeline in {filename} holds over {n} bytes; the most is {limit} (--max-pipeline-bytes)"
    ))
}

/// The one pipeline file (`.yaml`, `.yml`, `.json`) of an archive; other files are passed
/// over, as KFP does.
struct OnePipeline<'a> {
    upload: &'a Upload,
    limit: usize,
    found: Option<Vec<u8>>,
}

impl<'a> OnePipeline<'a> {
    fn new(upload: &'a Upload, limit: usize) -> Self {
        OnePipeline {
            upload,
            limit,
            found: None,
        }
    }

    fn offer(&mut self, name: &str, entry: impl Read) -> Result<(), HttpError> {
        let is_pipeline = [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if !is_pipeline {
            return Ok(());
        }
        if self.found.is_some() {
            return Err(HttpError::bad(format!(
                "{} holds more than one pipeline file; a package holds exactly one",
                self.upload.filename
            )));
        }
        let mut buf = Vec::new();
        entry
            .take(self.limit as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| HttpError::bad(format!("{}: {e}", self.upload.filename)))?;
        if buf.len() > self.limit {
            return Err(too_big(self.limit, &self.upload.filename, self.limit));
        }
        self.found = Some(buf);
        Ok(())
    }

    fn take(self) -> Result<Vec<u8>, HttpError> {
        self.found.ok_or_else(|| {
            HttpError::bad(format!(
                "{} holds no .yaml, .yml or .json file",
                self.upload.filename
            ))
        })
    }
}

/// The pipeline text of an uploaded package (YAML or JSON, or a `.tar.gz` or `.zip` holding
/// exactly one), at most `limit` bytes once unpacked.
pub fn pipeline_text(upload: &Upload, limit: usize) -> Result<String, HttpError> {
    let data = &upload.data[..];
    let bytes = if data.starts_with(&[0x1f, 0x8b]) {
        let not_targz = |e: std::io::Error| {
            HttpError::bad(format!("{} is not a .tar.gz: {e}", upload.filename))
        };
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(data));
        let mut found = OnePipeline::new(upload, limit);
        for entry in archive.entries().map_err(not_targz)? {
            let entry = entry.map_err(not_targz)?;
            let name = entry
                .path()
                .map(|p| p.to_string_lossy().to_string())
                .unwrap_or_default();
            found.offer(&name, entry)?;
        }
        found.take()?
    } else if data.starts_with(b"PK\x03\x04") {
        let not_zip = |e: zip::result::ZipError| {
            HttpError::bad(format!("{} is not a .zip: {e}", upload.filename))
        };
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(not_zip)?;
        let mut found = OnePipeline::new(upload, limit);
        for i in 0..archive.len() {
            let entry = archive.by_index(i).map_err(not_zip)?;
            if entry.is_dir() {
                continue;
            }
            let name = entry.name().to_string();
            found.offer(&name, entry)?;
        }
        found.take()?
    } else {
        if data.len() > limit {
            return Err(too_big(limit, &upload.filename, limit));
        }
        data.to_vec()
    };
    String::from_utf8(bytes)
        .map_err(|_| HttpError::bad(format!("{} is not UTF-8 text", upload.filename)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(data: Vec<u8>) -> Upload {
        Upload {
            filename: "p.tar.gz".into(),
            data: data.into(),
        }
    }

    fn targz(files: &[(&str, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, text) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, text.as_bytes()).unwrap();
        }
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    }

    fn zipped(files: &[(&str, &str)]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, text) in files {
            if name.ends_with('/') {
                z.add_directory(*name, opts).unwrap();
            } else {
                z.start_file(*name, opts).unwrap();
                std::io::Write::write_all(&mut z, text.as_bytes()).unwrap();
            }
        }
        z.finish().unwrap().into_inner()
    }

    #[test]
    fn a_package_holds_exactly_one_pipeline_within_the_limit() {
        let ok = targz(&[("README", "x"), ("pipeline.yaml", "a: 1")]);
        assert_eq!(pipeline_text(&upload(ok), 100).unwrap(), "a: 1");
        let two = targz(&[("a.yaml", "a: 1"), ("b.yaml", "b: 1")]);
        assert!(pipeline_text(&upload(two), 100)
            .unwrap_err()
            .message
            .contains("more than one"));
        let big = targz(&[("a.yaml", &"x".repeat(1000))]);
        assert!(pipeline_text(&upload(big), 100)
            .unwrap_err()
            .message
            .contains("the most is 100"));
        let broken = b"PK\x03\x04rest".to_vec();
        assert!(pipeline_text(&upload(broken), 100)
            .unwrap_err()
            .message
            .contains("is not a .zip"));
        let ok = zipped(&[("dir/", ""), ("README", "x"), ("pipeline.yaml", "a: 1")]);
        assert_eq!(pipeline_text(&upload(ok), 100).unwrap(), "a: 1");
        let two = zipped(&[("a.yaml", "a: 1"), ("b.yml", "b: 1")]);
        assert!(pipeline_text(&upload(two), 100)
            .unwrap_err()
            .message
            .contains("more than one"));
        let big = zipped(&[("a.yaml", &"x".repeat(1000))]);
        assert!(pipeline_text(&upload(big), 100)
            .unwrap_err()
            .message
            .contains("the most is 100"));
        let none = zipped(&[("README", "x")]);
        assert!(pipeline_text(&upload(none), 100)
            .unwrap_err()
            .message
            .contains("holds no .yaml"));
        assert!(pipeline_text(&upload(vec![0xff, 0xfe]), 100).is_err());
    }

    #[tokio::test]
    async fn the_file_is_read_from_the_uploadfile_part() {
        let body = "--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n\
                    --b\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\n\
                    Content-Type: application/octet-stream\r\n\r\na: 1\r\n--b--\r\n";
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "multipart/form-data; boundary=b".parse().unwrap(),
        );
        let u = read_multipart(&headers, Bytes::from(body)).await.unwrap();
        assert_eq!((u.filename.as_str(), &u.data[..]), ("p.yaml", &b"a: 1"[..]));
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        assert!(read_multipart(&headers, Bytes::from(body)).await.is_err());
    }
}
