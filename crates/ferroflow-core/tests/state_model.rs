//! Model test: the in-memory and RocksDB backends give identical results for any sequence of
//! operations, snapshot and restore included.
#![cfg(feature = "rocksdb")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferroflow_core::state::{
    MemoryStateBackend, RocksDbOptions, RocksDbStateBackend, StateBackend, WriteBatch,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>, Vec<u8>),
    Delete(u8, Vec<u8>),
    DeletePrefix(u8, Vec<u8>),
    DeleteLargePrefix(u8, Vec<u8>),
    Get(u8, Vec<u8>),
    Scan(u8, Vec<u8>),
    Batch(Vec<(u8, Vec<u8>, Option<Vec<u8>>)>),
    /// Snapshot, apply nothing else, restore into the same backend (state must be unchanged).
    SnapshotRestore,
    /// Snapshot now; later ops continue; then restore this snapshot (later writes vanish).
    SnapshotThenRollback(Vec<(u8, Vec<u8>, Vec<u8>)>),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // Few distinct short keys so operations collide; include 0x00 and 0xff edge bytes.
    prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(2u8), Just(255u8)], 0..4)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..12)
}

fn ns() -> impl Strategy<Value = u8> {
    0u8..3
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (ns(), key(), value()).prop_map(|(n, k, v)| Op::Put(n, k, v)),
        2 => (ns(), key()).prop_map(|(n, k)| Op::Delete(n, k)),
        1 => (ns(), key()).prop_map(|(n, k)| Op::DeletePrefix(n, k)),
        1 => (ns(), key()).prop_map(|(n, k)| Op::DeleteLargePrefix(n, k)),
        2 => (ns(), key()).prop_map(|(n, k)| Op::Get(n, k)),
        2 => (ns(), key()).prop_map(|(n, k)| Op::Scan(n, k)),
        1 => prop::collection::vec((ns(), key(), prop::option::of(value())), 0..5).prop_map(Op::Batch),
        1 => Just(Op::SnapshotRestore),
        1 => prop::collection::vec((ns(), key(), value()), 0..4).prop_map(Op::SnapshotThenRollback),
    ]
}

fn name(n: u8) -> String {
    format!("ns{n}")
}

fn dump(s: &dyn StateBackend) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for n in 0..3u8 {
        for kv in s.scan_prefix(&name(n), &[]).unwrap() {
            let (k, v) = kv.unwrap();
            out.push((n, k, v));
        }
    }
    out
}

fn apply(s: &mut dyn StateBackend, op: &Op, scratch: &std::path::Path, step: usize) -> Vec<String> {
    let mut seen = Vec::new();
    match op {
        Op::Put(n, k, v) => s.put(&name(*n), k, v).unwrap(),
        Op::Delete(n, k) => s.delete(&name(*n), k).unwrap(),
        Op::DeletePrefix(n, k) => s.delete_prefix(&name(*n), k).unwrap(),
        Op::DeleteLargePrefix(n, k) => s.delete_large_prefix(&name(*n), k).unwrap(),
        Op::Get(n, k) => seen.push(format!("{:?}", s.get(&name(*n), k).unwrap())),
        Op::Scan(n, k) => {
            let v: Vec<_> = s.scan_prefix(&name(*n), k).unwrap().map(|kv| kv.unwrap()).collect();
            seen.push(format!("{v:?}"));
        }
        Op::Batch(ops) => {
            let mut b = WriteBatch::default();
            for (n, k, v) in ops {
                match v {
                    Some(v) => b.put(&name(*n), k, v),
                    None => b.delete(&name(*n), k),
                }
            }
            s.write_batch(b).unwrap();
        }
        Op::SnapshotRestore => {
            let dir = scratch.join(format!("snap-{step}"));
            s.snapshot(&dir).unwrap();
            s.restore(&dir).unwrap();
        }
        Op::SnapshotThenRollback(writes) => {
            let dir = scratch.join(format!("snap-{step}"));
            s.snapshot(&dir).unwrap();
            for (n, k, v) in writes {
                s.put(&name(*n), k, v).unwrap();
            }
            s.restore(&dir).unwrap();
        }
    }
    seen
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn memory_and_rocksdb_agree(ops in prop::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let mut mem = MemoryStateBackend::new();
        let mut rocks = RocksDbStateBackend::open(tmp.path().join("db"), RocksDbOptions::default()).unwrap();
        for (i, op) in ops.iter().enumerate() {
            let a = apply(&mut mem, op, &tmp.path().join("mem"), i);
            let b = apply(&mut rocks, op, &tmp.path().join("rocks"), i);
            prop_assert_eq!(a, b, "reads differ after op {} {:?}", i, op);
            prop_assert_eq!(dump(&mem), dump(&rocks), "contents differ after op {} {:?}", i, op);
        }
        // A snapshot restored into a brand-new backend holds the same contents.
        rocks.snapshot(&tmp.path().join("final")).unwrap();
        let mut fresh = RocksDbStateBackend::open(tmp.path().join("db2"), RocksDbOptions::default()).unwrap();
        fresh.restore(&tmp.path().join("final")).unwrap();
        prop_assert_eq!(dump(&mem), dump(&fresh));
    }
}
