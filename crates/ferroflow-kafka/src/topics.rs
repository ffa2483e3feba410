//! The topics a source reads, and how their partitions are numbered for the job.
//!
//! A source reads one topic, or two co-partitioned ones with one consumer (the inputs of a join
//! per partition). Partition `p` of the first topic is the job's partition `p`; partition `p` of
//! the second is [`RIGHT_PARTITIONS`]` + p`, as in a [`UnionSource`](ferroflow_core::source::UnionSource),
//! so each has its own watermark and offset while the job's task `p` runs both.

use std::collections::BTreeSet;

use ferroflow_core::PartitionId;
use ferroflow_core::source::RIGHT_PARTITIONS;

/// One topic, or two co-partitioned ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topics {
    names: Vec<String>,
}

impl Topics {
    /// `first`, and `co` when the source reads a second topic with it.
    pub(crate) fn new(first: &str, co: Option<&str>) -> Self {
        Self { names: std::iter::once(first).chain(co).map(str::to_owned).collect() }
    }

    /// The topics' names, first topic first.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// The first topic's name.
    pub(crate) fn first(&self) -> &str {
        self.names.first().map_or("", String::as_str)
    }

    /// How many topics (the job's inputs).
    pub(crate) fn count(&self) -> usize {
        self.names.len()
    }

    /// The job's id of partition `p` of `topic`; `None` for a topic the source does not read.
    pub(crate) fn id(&self, topic: &str, p: i32) -> Option<PartitionId> {
        let input = self.names.iter().position(|n| n == topic)?;
        let p = PartitionId::try_from(p).ok().filter(|p| *p < RIGHT_PARTITIONS)?;
        Some(if input == 0 { p } else { RIGHT_PARTITIONS + p })
    }

    /// The topic and Kafka partition of the job's partition `id`.
    pub(crate) fn of(&self, id: PartitionId) -> Option<(&str, i32)> {
        let (input, p) = if id >= RIGHT_PARTITIONS { (1, id - RIGHT_PARTITIONS) } else { (0, id) };
        Some((self.names.get(input)?.as_str(), i32::try_from(p).ok()?))
    }

    /// For two topics: why an assignment (or revocation) of the job's partitions `ids` is not
    /// co-partitioned, that is, names partition numbers of one topic without the other's.
    pub(crate) fn unpaired(&self, ids: &[PartitionId]) -> Option<String> {
        if self.names.len() < 2 {
            return None;
        }
        let mut sides = [BTreeSet::new(), BTreeSet::new()];
        for &id in ids {
            let (input, p) = if id >= RIGHT_PARTITIONS { (1, id - RIGHT_PARTITIONS) } else { (0, id) };
            sides[input].insert(p);
        }
        let [first, second] = &sides;
        if first == second {
            return None;
        }
        let only = |a: &BTreeSet<PartitionId>, b: &BTreeSet<PartitionId>| {
            a.difference(b).copied().collect::<Vec<_>>()
        };
        Some(format!(
            "partitions {:?} of `{}` without the same numbers of `{}`, and {:?} of `{}` without theirs",
            only(first, second),
            self.first(),
            self.names[1],
            only(second, first),
            self.names[1],
        ))
    }
}

impl std::fmt::Display for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names.join("+"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_topics_partitions_are_numbered_after_the_first_and_back() {
        let t = Topics::new("views", Some("clicks"));
        assert_eq!(t.id("views", 2), Some(2));
        assert_eq!(t.id("clicks", 2), Some(RIGHT_PARTITIONS + 2));
        assert_eq!(t.id("other", 2), None);
        assert_eq!(t.of(RIGHT_PARTITIONS + 2), Some(("clicks", 2)));
        assert_eq!(t.of(2), Some(("views", 2)));
        assert_eq!(Topics::new("views", None).of(RIGHT_PARTITIONS), None);
    }

    #[test]
    fn an_assignment_with_a_partition_number_of_one_topic_only_is_unpaired() {
        let t = Topics::new("views", Some("clicks"));
        assert_eq!(t.unpaired(&[0, 1, RIGHT_PARTITIONS, RIGHT_PARTITIONS + 1]), None);
        let why = t.unpaired(&[0, 1, RIGHT_PARTITIONS]).unwrap_or_default();
        assert!(why.contains("[1] of `views`") && why.contains("[] of `clicks`"), "{why}");
        assert_eq!(Topics::new("views", None).unpaired(&[0, 3]), None);
    }
}
