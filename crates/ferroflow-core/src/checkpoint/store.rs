//! The object store behind checkpoints, chosen by URL: `file:///…`, `s3://bucket/prefix`, or
//! `memory://` (tests).

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::CheckpointError;

/// S3 settings; anything left unset falls back to the usual `AWS_*` environment variables.
///
/// The secret is never printed: `Debug` masks it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Options {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000` for MinIO (default: AWS).
    pub endpoint: Option<String>,
    /// Region (MinIO accepts any; Garage expects its configured region, e.g. `garage`).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Virtual-hosted-style addressing (`bucket.host`); off by default, which is path style, as
    /// MinIO and Garage need.
    pub virtual_hosted_style: bool,
}

impl S3Options {
    /// Path-style settings (MinIO, Garage) from optional endpoint, region and credentials.
    pub fn path_style(
        endpoint: Option<String>,
        region: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
    ) -> Self {
        Self { endpoint, region, access_key_id, secret_access_key, virtual_hosted_style: false }
    }
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

/// An object store plus the prefix under which a job keeps its checkpoints.
///
/// # Examples
/// ```
/// use ferroflow_core::checkpoint::{CheckpointStore, S3Options};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
/// store.put("a/b.json", bytes::Bytes::from_static(b"{}")).await.unwrap();
/// assert_eq!(store.list("a/").await.unwrap(), vec![("a/b.json".to_string(), 2)]);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
}

fn storage(location: impl Into<String>, source: object_store::Error) -> CheckpointError {
    CheckpointError::Storage { location: location.into(), source }
}

impl CheckpointStore {
    /// Opens the store a URL names: `file:///abs/dir`, `s3://bucket/optional/prefix`, `memory://`.
    pub fn from_url(url: &str, s3: &S3Options) -> Result<Self, CheckpointError> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(CheckpointError::Config(format!(
                    "{url}: file URLs need an absolute path (file:///dir)"
                )));
            }
            std::fs::create_dir_all(path).map_err(|e| CheckpointError::io(path, e))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
                .map_err(|e| CheckpointError::Config(format!("{url}: {e}")))?;
            return Ok(Self { store: Arc::new(fs), prefix: String::new(), location: url.to_owned() });
        }
        if url.starts_with("memory://") {
            let mem = object_store::memory::InMemory::new();
            return Ok(Self { store: Arc::new(mem), prefix: String::new(), location: url.to_owned() });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(CheckpointError::Config(format!("{url}: missing bucket (s3://bucket/prefix)")));
            }
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(s3.virtual_hosted_style);
            if let Some(e) = &s3.endpoint {
                b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
            }
            if let Some(r) = &s3.region {
                b = b.with_region(r);
            }
            if let Some(k) = &s3.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &s3.secret_access_key {
                b = b.with_secret_access_key(k);
            }
            let store = b.build().map_err(|e| CheckpointError::Config(format!("{url}: {e}")))?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: prefix.trim_matches('/').to_owned(),
                location: url.to_owned(),
            });
        }
        Err(CheckpointError::Config(format!(
            "unsupported checkpoint URL {url}: use file:///dir, s3://bucket/prefix or memory://"
        )))
    }

    /// The URL the store was opened from (it holds no secrets).
    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn relative(&self, path: &ObjectPath) -> String {
        let s = path.as_ref();
        if self.prefix.is_empty() {
            s.to_owned()
        } else {
            s.strip_prefix(&self.prefix)
                .map(|r| r.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| s.to_owned())
        }
    }

    /// The same store with `name` appended to the prefix: the folder of one instance of a job.
    pub fn child(&self, name: &str) -> Self {
        let name = name.trim_matches('/');
        let prefix = if self.prefix.is_empty() { name.to_owned() } else { format!("{}/{name}", self.prefix) };
        Self {
            store: Arc::clone(&self.store),
            prefix,
            location: format!("{}/{name}", self.location.trim_end_matches('/')),
        }
    }

    /// Names of the folders directly under the store's prefix.
    pub async fn list_folders(&self) -> Result<Vec<String>, CheckpointError> {
        let base = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let listing =
            self.store.list_with_delimiter(base.as_ref()).await.map_err(|e| storage(&self.location, e))?;
        let mut out: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.parts().next_back().map(|part| part.as_ref().to_owned()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Writes an object.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), CheckpointError> {
        self.store
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| storage(key, e))
    }

    /// Reads an object.
    pub async fn get(&self, key: &str) -> Result<Bytes, CheckpointError> {
        let r = self.store.get(&self.path(key)).await.map_err(|e| storage(key, e))?;
        r.bytes().await.map_err(|e| storage(key, e))
    }

    /// The size of an object, or `None` if it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, CheckpointError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage(key, e)),
        }
    }

    /// Deletes an object (no error if it is already gone).
    pub async fn delete(&self, key: &str) -> Result<(), CheckpointError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage(key, e)),
        }
    }

    /// Lists objects whose key starts with `prefix` (a folder, ending in `/`): `(key, size)`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, CheckpointError> {
        Ok(self.list_meta(prefix).await?.into_iter().map(|o| (o.key, o.size)).collect())
    }

    /// Lists objects whose key starts with `prefix` with their size and the store's
    /// last-modified time, sorted by key.
    pub async fn list_meta(&self, prefix: &str) -> Result<Vec<StoredObject>, CheckpointError> {
        let folder = prefix.trim_end_matches('/');
        let base = self.path(folder);
        let mut out: Vec<StoredObject> = self
            .store
            .list(Some(&base))
            .map_ok(|m| StoredObject {
                key: self.relative(&m.location),
                size: m.size,
                modified_ms: m.last_modified.timestamp_millis(),
            })
            .try_collect()
            .await
            .map_err(|e| storage(prefix, e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Key relative to the store's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When the store last wrote it, ms since the epoch, by the store's clock.
    pub modified_ms: i64,
}
