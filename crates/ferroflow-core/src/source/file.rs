//! Reads JSON-lines files: one partition per file, the line index as offset.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::{Source, SourceBatch, SourceEvent};
use crate::dead_letter::{DeadLetter, DeadLetterReason};
use crate::error::SourceError;
use crate::record::{PartitionId, Record, SourcePosition};

/// Bytes read from a file per call.
const CHUNK: usize = 1 << 20;

/// Turns one line into a payload, or explains why it can't.
type Decoder<T> = fn(&Bytes) -> Result<T, String>;

struct FilePartition {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// Bytes of an incomplete last line, carried into the next read.
    carry: BytesMut,
    next_line: u64,
    /// Lines below this index were processed before the restored checkpoint.
    skip_below: u64,
    done: bool,
}

/// Reads newline-delimited files, one partition per file (partition = index in the list), and
/// either hands each line on as raw bytes ([`JsonLinesSource::raw`]) or decodes it as JSON
/// ([`JsonLinesSource::open`]). A line that does not decode becomes a dead letter with reason
/// `decode_error`, its line number and its bytes. Blank lines are skipped (they carry no record).
///
/// Files are read in 1 MiB chunks, round-robin across partitions, and lines are zero-copy slices
/// of the chunk.
///
/// # Examples
/// ```
/// use ferroflow_core::source::{JsonLinesSource, Source, SourceEvent};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("in.jsonl");
/// std::fs::write(&path, "{\"v\":1}\n{oops\n").unwrap();
/// let mut src = JsonLinesSource::<serde_json::Value>::open([&path]);
/// let _assigned = src.next_event().await.unwrap();
/// let Some(SourceEvent::Batch(b)) = src.next_event().await.unwrap() else { panic!() };
/// assert_eq!(b.records[0].payload["v"], 1);
/// assert!(b.dead_letters[0].detail.starts_with("line 2:"));
/// # });
/// ```
pub struct JsonLinesSource<T> {
    partitions: Vec<FilePartition>,
    decode: Decoder<T>,
    announced: bool,
    cursor: usize,
    /// Partitions that reached end of file and whose finish is not yet reported.
    finished: Vec<PartitionId>,
    chunk: usize,
}

impl<T> std::fmt::Debug for JsonLinesSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<_> = self.partitions.iter().map(|p| p.path.display().to_string()).collect();
        f.debug_struct("JsonLinesSource").field("paths", &paths).finish()
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(line: &Bytes) -> Result<T, String> {
    crate::json::parse(line).map_err(|r| r.detail)
}

impl<T: serde::de::DeserializeOwned + Send + 'static> JsonLinesSource<T> {
    /// Reads `paths` and decodes each line as JSON into `T`.
    pub fn open<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Self {
        Self::with_decoder(paths, decode_json::<T>)
    }
}

impl JsonLinesSource<Bytes> {
    /// Reads `paths` and hands each line on as raw bytes (decode later, e.g. with `try_map`).
    pub fn raw<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Self {
        Self::with_decoder(paths, |b| Ok(b.clone()))
    }
}

impl<T: Send + 'static> JsonLinesSource<T> {
    fn with_decoder<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>, decode: Decoder<T>) -> Self {
        let partitions = paths
            .into_iter()
            .map(|p| FilePartition {
                path: p.as_ref().to_path_buf(),
                file: None,
                carry: BytesMut::new(),
                next_line: 0,
                skip_below: 0,
                done: false,
            })
            .collect();
        Self { partitions, decode, announced: false, cursor: 0, finished: Vec::new(), chunk: CHUNK }
    }

    /// Reads `bytes` per call instead of 1 MiB (smaller batches, e.g. to pace a demo).
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(64);
        self
    }

    fn push_line(&self, pid: PartitionId, line_no: u64, line: Bytes, batch: &mut SourceBatch<T>) {
        if line_no < self.partitions[pid as usize].skip_below {
            return; // already processed before the checkpoint this run resumed from
        }
        let line = trim_cr(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let position = SourcePosition::new(pid, line_no);
        match (self.decode)(&line) {
            Ok(payload) => {
                batch.records.push(Record::new(payload, 0).with_position(position));
                batch.originals.push((position, line));
            }
            Err(e) => batch.dead_letters.push(DeadLetter::new(
                DeadLetterReason::DecodeError,
                format!("line {}: {e}", line_no + 1),
                position,
                line,
            )),
        }
    }
}

fn trim_cr(line: Bytes) -> Bytes {
    if line.last() == Some(&b'\r') { line.slice(..line.len() - 1) } else { line }
}

impl<T: Send + 'static> Source<T> for JsonLinesSource<T> {
    fn seek(&mut self, offsets: &std::collections::BTreeMap<PartitionId, u64>) -> Result<(), SourceError> {
        // Lines are variable-length, so resuming re-reads the file and skips lines below the offset.
        for (i, p) in self.partitions.iter_mut().enumerate() {
            p.skip_below = offsets.get(&(i as PartitionId)).copied().unwrap_or(0);
        }
        Ok(())
    }

    async fn next_event(&mut self) -> Result<Option<SourceEvent<T>>, SourceError> {
        if let Some(done) = self.finished.pop() {
            // The partition's last lines went out with the previous batch.
            return Ok(Some(SourceEvent::PartitionFinished(done)));
        }
        if !self.announced {
            self.announced = true;
            let ids = (0..self.partitions.len()).map(|i| i as PartitionId).collect();
            return Ok(Some(SourceEvent::PartitionsAssigned(ids)));
        }
        let n = self.partitions.len();
        // Keep reading until something comes out: chunks may hold only skipped or blank lines.
        while self.partitions.iter().any(|p| !p.done) {
            for _ in 0..n {
                let idx = self.cursor % n;
                self.cursor = self.cursor.wrapping_add(1);
                if self.partitions[idx].done {
                    continue;
                }
                let pid = idx as PartitionId;
                let p = &mut self.partitions[idx];
                if p.file.is_none() {
                    let f = tokio::fs::File::open(&p.path)
                        .await
                        .map_err(|source| SourceError::Io { path: p.path.clone(), source })?;
                    p.file = Some(f);
                }
                let mut buf = std::mem::take(&mut p.carry);
                buf.reserve(self.chunk);
                let chunk = self.chunk;
                let read = match p.file.as_mut() {
                    Some(f) => f
                        .read_buf(&mut bytes::BufMut::limit(&mut buf, chunk))
                        .await
                        .map_err(|source| SourceError::Io { path: p.path.clone(), source })?,
                    None => 0,
                };
                let eof = read == 0;
                let data = buf.freeze();
                // Split complete lines; keep the tail unless at end of file.
                let complete_end =
                    if eof { data.len() } else { memchr::memrchr(b'\n', &data).map_or(0, |i| i + 1) };
                let tail = data.slice(complete_end..);
                let mut lines = Vec::with_capacity(complete_end / 128 + 1);
                let mut start = 0usize;
                for i in memchr::memchr_iter(b'\n', &data[..complete_end]) {
                    lines.push(data.slice(start..i));
                    start = i + 1;
                }
                if start < complete_end {
                    lines.push(data.slice(start..complete_end));
                }
                let p = &mut self.partitions[idx];
                p.carry = BytesMut::from(&tail[..]);
                let first_line = p.next_line;
                p.next_line += lines.len() as u64;
                if eof {
                    p.done = true;
                    p.file = None;
                    self.finished.push(pid);
                }
                let mut batch = SourceBatch {
                    records: Vec::with_capacity(lines.len()),
                    originals: Vec::with_capacity(lines.len()),
                    dead_letters: Vec::new(),
                    progress: None,
                };
                for (i, line) in lines.into_iter().enumerate() {
                    self.push_line(pid, first_line + i as u64, line, &mut batch);
                }
                if !batch.records.is_empty() || !batch.dead_letters.is_empty() {
                    return Ok(Some(SourceEvent::Batch(batch)));
                }
                if let Some(done) = self.finished.pop() {
                    return Ok(Some(SourceEvent::PartitionFinished(done)));
                }
            }
        }
        if let Some(done) = self.finished.pop() {
            return Ok(Some(SourceEvent::PartitionFinished(done)));
        }
        Ok(None)
    }
}
