//! Partition hand-over between instances through their checkpoint folders, when a folder changes
//! writer: a fenced writer's last manifest must not be trusted as a partition's safe place.
#![cfg(feature = "checkpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use bytes::Bytes;
use ferroflow_core::PartitionId;
use ferroflow_core::checkpoint::{
    CheckpointConfig, CheckpointCoordinator, CheckpointMeta, CheckpointStore, OWNED_PARTITIONS,
    PartitionHandOver, RestoreOutcome, S3Options,
};
use ferroflow_core::state::MemoryStateBackend;

/// A checkpoint's meta: offsets, and the partitions whose tasks ran in the writer.
fn meta(offsets: &[(PartitionId, u64)], owned: &[PartitionId]) -> CheckpointMeta {
    let list: Vec<String> = owned.iter().map(ToString::to_string).collect();
    CheckpointMeta {
        source_offsets: offsets.iter().copied().collect(),
        metadata: BTreeMap::from([(OWNED_PARTITIONS.to_owned(), list.join(","))]),
        ..CheckpointMeta::default()
    }
}

async fn open(store: CheckpointStore, scratch: &std::path::Path) -> CheckpointCoordinator {
    CheckpointCoordinator::open(store, CheckpointConfig::new("job", scratch)).await.unwrap()
}

/// The writer of folder `a` is replaced while it runs partition 1, which instance `x` released
/// and still carries. The old writer's last manifest (the first to own partition 1) commits after
/// the new writer's claim: its fence check raced the claim. The new writer restored the
/// checkpoint before, without partition 1, and its retention deletes the raced manifest after a
/// few checkpoints of its own. Had `x` dropped its copy on the raced manifest's word, partition
/// 1's state would be nowhere: its next owner would start it empty, and windows would lose rows.
#[tokio::test]
async fn a_fenced_writers_raced_manifest_does_not_supersede_a_carried_partition() {
    let scratch = tempfile::tempdir().unwrap();
    let base = CheckpointStore::from_url("memory://", &S3Options::default()).unwrap();
    let a = PartitionHandOver::new(base.clone(), "a", 1);
    let x = PartitionHandOver::new(base.clone(), "x", 1);

    let mut old = open(a.instance_store(), &scratch.path().join("old")).await;
    let c1 = old.take(&mut MemoryStateBackend::new(), meta(&[(0, 10)], &[0])).await.unwrap().manifest;
    // x released partition 1 at offset 15 and carries it.
    let mut xw = open(x.instance_store(), &scratch.path().join("x")).await;
    xw.take(&mut MemoryStateBackend::new(), meta(&[(1, 15)], &[])).await.unwrap();

    let mut new = open(a.instance_store(), &scratch.path().join("new")).await;
    new.claim().await.unwrap();
    let mut state = MemoryStateBackend::new();
    let restored = new.restore_latest(&mut state).await.unwrap();
    assert!(matches!(restored, RestoreOutcome::Restored(m) if m.id == c1.id));

    // The old writer's raced commit: its id carries the old epoch.
    let mut raced = c1.clone();
    raced.id = c1.id + 1;
    raced.source_offsets = BTreeMap::from([(0, 12), (1, 20)]);
    raced.metadata.insert(OWNED_PARTITIONS.to_owned(), "0,1".to_owned());
    let key = format!("checkpoints/{:020}.json", raced.id);
    a.instance_store().put(&key, Bytes::from(serde_json::to_vec(&raced).unwrap())).await.unwrap();
    assert_eq!(a.locate(&[1]).await.unwrap()[&1].offset, 20, "the raced manifest is readable");

    let carried = BTreeMap::from([(1, 15)]);
    assert_eq!(
        x.superseded(&carried).await.unwrap(),
        Vec::<PartitionId>::new(),
        "only a manifest of a folder's current writer supersedes"
    );

    // The new writer checkpoints on; its retention deletes the raced manifest.
    for round in 0..3u64 {
        new.take(&mut state, meta(&[(0, 13 + round)], &[0])).await.unwrap();
    }
    let found = a.locate(&[1]).await.unwrap();
    assert_eq!(
        found.get(&1).map(|l| (l.instance.as_str(), l.offset)),
        Some(("x", 15)),
        "partition 1's state is still somewhere: x's copy"
    );

    // Once the folder's current writer owns partition 1 at least as far, x's copy can go.
    new.take(&mut state, meta(&[(0, 20), (1, 16)], &[0, 1])).await.unwrap();
    assert_eq!(x.superseded(&carried).await.unwrap(), vec![1]);
}
