//! Checkpoint benchmark: a RocksDB state of 1M keys, a full checkpoint, an incremental one after 1%
//! of the keys changed, and a full restore.
//!
//! ```text
//! # against the local S3 server (Garage) that scripts/services.sh starts:
//! scripts/services.sh start && eval "$(scripts/services.sh env)"
//! cargo run --release --example checkpoint_bench -- --keys 1000000
//! # or against a local directory: --url file:///tmp/ferroflow-bench
//! ```
//!
//! Prints one `key=value` line per figure and, last,
//! `full_checkpoint_s=… full_bytes=… incremental_checkpoint_s=… incremental_bytes=… incremental_ratio=… restore_s=…`.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use ferroflow::checkpoint::{
    CheckpointConfig, CheckpointCoordinator, CheckpointStore, RestoreOutcome, S3Options, coordinator_meta,
};
use ferroflow::state::{RocksDbOptions, RocksDbStateBackend, StateBackend, WriteBatch};

struct Args {
    keys: u64,
    churn_percent: u64,
    url: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { keys: 1_000_000, churn_percent: 1, url: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--keys" => args.keys = value()?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--churn-percent" => {
                args.churn_percent = value()?.parse().map_err(|e| format!("--churn-percent: {e}"))?
            }
            "--url" => args.url = Some(value()?),
            "--bench" => {}
            other => {
                return Err(format!("unknown flag {other}; use --keys N [--churn-percent P] [--url URL]"));
            }
        }
    }
    Ok(args)
}

/// Window-state-like rows: a 24-byte key and a ~40-byte accumulator.
fn write_keys(
    state: &mut dyn StateBackend,
    keys: impl Iterator<Item = u64>,
    generation: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut batch = WriteBatch::default();
    for k in keys {
        let key = format!("window-0001:user-{k:010}");
        let value = format!("{{count:{generation},sum:{},min:1.0,max:{k}.5}}", k * 3 + generation);
        batch.put("window-0", key.as_bytes(), value.as_bytes());
        if batch.ops.len() >= 50_000 {
            state.write_batch(std::mem::take(&mut batch))?;
        }
    }
    state.write_batch(batch)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let (url, s3) = match (&args.url, std::env::var("FERROFLOW_S3_ENDPOINT")) {
        (Some(u), _) => (u.clone(), S3Options::default()),
        (None, Ok(endpoint)) => {
            let bucket = std::env::var("FERROFLOW_S3_BUCKET").unwrap_or_else(|_| "checkpoints".into());
            let prefix = format!("bench-{}", std::process::id());
            (
                format!("s3://{bucket}/{prefix}"),
                S3Options {
                    endpoint: Some(endpoint),
                    region: std::env::var("FERROFLOW_S3_REGION").ok(),
                    access_key_id: std::env::var("FERROFLOW_S3_ACCESS_KEY_ID").ok(),
                    secret_access_key: std::env::var("FERROFLOW_S3_SECRET_ACCESS_KEY").ok(),
                    virtual_hosted_style: false,
                },
            )
        }
        (None, Err(_)) => (format!("file://{}", tmp.path().join("store").display()), S3Options::default()),
    };
    println!("store={url} keys={} churn_percent={}", args.keys, args.churn_percent);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let store = CheckpointStore::from_url(&url, &s3)?;
    let mut state = RocksDbStateBackend::open(tmp.path().join("db"), RocksDbOptions::default())?;

    let t = Instant::now();
    write_keys(&mut state, 0..args.keys, 1)?;
    println!("load_s={:.2}", t.elapsed().as_secs_f64());

    let mut coord = runtime.block_on(CheckpointCoordinator::open(
        store.clone(),
        CheckpointConfig::new("bench", tmp.path().join("s1")),
    ))?;
    let full = runtime.block_on(coord.take(&mut state, coordinator_meta(&[(0, args.keys)])))?;
    println!(
        "full: {:.2}s, {} bytes uploaded in {} files (state {} bytes)",
        full.duration.as_secs_f64(),
        full.bytes_uploaded,
        full.files_uploaded,
        full.manifest.state_bytes()
    );

    // Change `churn_percent` of the keys, spread over the key space.
    let step = (100 / args.churn_percent.clamp(1, 100)).max(1);
    write_keys(&mut state, (0..args.keys).step_by(step as usize), 2)?;
    let incr = runtime.block_on(coord.take(&mut state, coordinator_meta(&[(0, args.keys * 2)])))?;
    let ratio = incr.bytes_uploaded as f64 / full.bytes_uploaded.max(1) as f64;
    println!(
        "incremental: {:.2}s, {} bytes uploaded in {} files ({:.1}% of the full upload)",
        incr.duration.as_secs_f64(),
        incr.bytes_uploaded,
        incr.files_uploaded,
        ratio * 100.0
    );

    let mut restored = RocksDbStateBackend::open(tmp.path().join("db-restored"), RocksDbOptions::default())?;
    let mut coord2 = runtime.block_on(CheckpointCoordinator::open(
        store,
        CheckpointConfig::new("bench", tmp.path().join("s2")),
    ))?;
    let t = Instant::now();
    let outcome = runtime.block_on(coord2.restore_latest(&mut restored))?;
    let restore_s = t.elapsed().as_secs_f64();
    let RestoreOutcome::Restored(m) = outcome else { return Err("nothing restored".into()) };
    let probe = format!("window-0001:user-{:010}", args.keys - 1);
    if restored.get("window-0", probe.as_bytes())?.is_none() || m.id != incr.manifest.id {
        return Err("restored state is incomplete".into());
    }
    let keys = restored.property_sum("rocksdb.estimate-num-keys")?;
    println!("restore: {restore_s:.2}s ({keys} keys estimated)");
    println!(
        "full_checkpoint_s={:.2} full_bytes={} incremental_checkpoint_s={:.2} incremental_bytes={} incremental_ratio={:.3} restore_s={:.2}",
        full.duration.as_secs_f64(),
        full.bytes_uploaded,
        incr.duration.as_secs_f64(),
        incr.bytes_uploaded,
        ratio,
        restore_s
    );
    Ok(())
}
