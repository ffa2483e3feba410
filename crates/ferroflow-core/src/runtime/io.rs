//! The source and sink task bodies, and the messages between them and the processing loop.
//!
//! The channels between the tasks hold at most `channel_capacity` batches each, so a slow sink
//! fills its channel, the processing loop waits on it, the source channel fills in turn, and the
//! source stops reading: memory stays bounded and the slowdown propagates to the input instead.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{JobError, SinkError, SourceError};
use crate::sink::Sink;
use crate::source::{Source, SourceEvent};

/// What travels to a sink task.
pub(super) enum SinkMsg<T> {
    Batch(Vec<T>),
    /// Flush everything before this point, answer, then begin `next_epoch`.
    Barrier {
        ack: oneshot::Sender<Result<(), SinkError>>,
        next_epoch: u64,
    },
}

/// Sends a checkpoint barrier down a sink channel and waits until the sink has flushed everything
/// before it. A failed flush comes back as the sink's own error, unchanged.
pub(super) async fn barrier<T>(
    tx: &mpsc::Sender<SinkMsg<T>>,
    task: &'static str,
    next_epoch: u64,
) -> Result<(), JobError> {
    let (ack_tx, ack_rx) = oneshot::channel();
    let gone = || JobError::Task { task, detail: "stopped before acknowledging a checkpoint barrier".into() };
    tx.send(SinkMsg::Barrier { ack: ack_tx, next_epoch }).await.map_err(|_| gone())?;
    ack_rx.await.map_err(|_| gone())?.map_err(JobError::Sink)
}

/// Waits for a task, turning a panic or cancellation into a [`JobError::Task`].
pub(super) async fn join<R>(task: &'static str, handle: JoinHandle<R>) -> Result<R, JobError> {
    handle.await.map_err(|e| JobError::Task { task, detail: e.to_string() })
}

/// Reads the source into the processing loop's channel. `None` on the channel is the explicit
/// end of input; an error returns before it is sent, so the loop sees the channel close without
/// it and stops without finalising anything (a failed source is not the end of input).
pub(super) async fn run_source<T, S: Source<T>>(
    mut source: S,
    tx: mpsc::Sender<Option<SourceEvent<T>>>,
) -> Result<(), SourceError> {
    while let Some(ev) = source.next_event().await? {
        if tx.send(Some(ev)).await.is_err() {
            return Ok(()); // the processing loop stopped; its error is reported there
        }
    }
    let _ = tx.send(None).await;
    Ok(())
}

/// Writes batches into a sink, flushes at barriers (then begins the next epoch), and gives the
/// sink an idle call when nothing arrives for `idle`.
pub(super) async fn run_sink<T, K: Sink<T>>(
    mut sink: K,
    mut rx: mpsc::Receiver<SinkMsg<T>>,
    first_epoch: u64,
    idle: Duration,
) -> Result<(), SinkError> {
    sink.begin_epoch(first_epoch);
    loop {
        let msg = match tokio::time::timeout(idle, rx.recv()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(_) => {
                sink.on_idle().await?;
                continue;
            }
        };
        match msg {
            SinkMsg::Batch(batch) => sink.write_batch(batch).await?,
            SinkMsg::Barrier { ack, next_epoch } => match sink.flush().await {
                Ok(()) => {
                    let _ = ack.send(Ok(()));
                    sink.begin_epoch(next_epoch);
                }
                // The error goes, whole, to the checkpoint waiting on the barrier, which stops the
                // job with it; it is this task's own result only when nobody waits any more.
                Err(e) => {
                    return match ack.send(Err(e)) {
                        Ok(()) | Err(Ok(())) => Ok(()),
                        Err(Err(e)) => Err(e),
                    };
                }
            },
        }
    }
    sink.flush().await
}
