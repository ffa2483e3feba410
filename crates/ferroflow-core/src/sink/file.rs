//! Writes items as JSON lines to a file.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::Sink;
use crate::error::SinkError;

/// Appends each item as one JSON line; `flush` syncs the file.
///
/// # Examples
/// ```
/// use ferroflow_core::sink::{JsonLinesSink, Sink};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("out.jsonl");
/// let mut sink = JsonLinesSink::create(&path).await.unwrap();
/// sink.write_batch(vec![serde_json::json!({"n": 1})]).await.unwrap();
/// Sink::<serde_json::Value>::flush(&mut sink).await.unwrap();
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n");
/// # });
/// ```
#[derive(Debug)]
pub struct JsonLinesSink {
    path: PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
    buf: Vec<u8>,
}

impl JsonLinesSink {
    /// Creates (or truncates) `path`.
    pub async fn create(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref().to_path_buf();
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|source| SinkError::Io { path: path.clone(), source })?;
        Ok(Self { path, file: tokio::io::BufWriter::with_capacity(1 << 20, file), buf: Vec::new() })
    }

    /// Opens `path` for appending, creating it if needed. A last line left incomplete by a crash
    /// is cut off first, so every line in the file stays whole JSON.
    pub async fn append(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| SinkError::Io { path: path.clone(), source };
        if let Ok(bytes) = tokio::fs::read(&path).await {
            let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < bytes.len() {
                let f = tokio::fs::OpenOptions::new().write(true).open(&path).await.map_err(io)?;
                f.set_len(whole as u64).await.map_err(io)?;
                f.sync_all().await.map_err(io)?;
                tracing::warn!(path = %path.display(), cut = bytes.len() - whole, "cut a torn last line");
            }
        }
        let file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await.map_err(io)?;
        Ok(Self { path, file: tokio::io::BufWriter::with_capacity(1 << 20, file), buf: Vec::new() })
    }

    fn io(&self, source: std::io::Error) -> SinkError {
        SinkError::Io { path: self.path.clone(), source }
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for JsonLinesSink {
    async fn write_batch(&mut self, batch: Vec<T>) -> Result<(), SinkError> {
        self.buf.clear();
        for item in &batch {
            serde_json::to_writer(&mut self.buf, item).map_err(|e| SinkError::Encode(e.to_string()))?;
            self.buf.push(b'\n');
        }
        let buf = std::mem::take(&mut self.buf);
        let res = self.file.write_all(&buf).await;
        self.buf = buf;
        res.map_err(|e| self.io(e))
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.file.flush().await.map_err(|e| self.io(e))?;
        self.file.get_ref().sync_data().await.map_err(|e| self.io(e))
    }
}
