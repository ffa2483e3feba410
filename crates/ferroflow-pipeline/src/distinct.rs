//! The window's distinct-user count and the set it keeps.

use ahash::AHashSet;
use ferroflow_core::window::Aggregator;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::Event;

/// Exact count of distinct `user_id`s: the window keeps the set (bounded by the users active in
/// one key's minute; an HLL sketch would trade exactness for constant memory).
///
/// # Examples
/// ```
/// use ferroflow_core::window::Aggregator;
/// use ferroflow_pipeline::distinct::DistinctUsers;
/// use ferroflow_pipeline::event::Event;
///
/// let event = |user: &str| Event {
///     event_id: "e".into(),
///     user_id: user.into(),
///     event_type: "view".into(),
///     ts: 0,
///     amount: 0.0,
/// };
/// let mut acc = DistinctUsers.create();
/// for user in ["u1", "u2", "u1"] {
///     DistinctUsers.add(&mut acc, &event(user));
/// }
/// assert_eq!(DistinctUsers.result(&acc), 2);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DistinctUsers;

impl Aggregator<Event> for DistinctUsers {
    type Acc = UserSet;
    type Output = u64;
    fn create(&self) -> UserSet {
        UserSet::default()
    }
    fn add(&self, acc: &mut UserSet, e: &Event) {
        acc.insert(&e.user_id);
    }
    fn merge(&self, acc: &mut UserSet, other: &UserSet) {
        for user in &other.0 {
            acc.insert(user);
        }
    }
    fn result(&self, acc: &UserSet) -> u64 {
        acc.len() as u64
    }
}

/// The users of one window: a hash set in memory (one hash and one comparison per event, a copy
/// only for a user new to the window), stored as the sorted list of ids.
///
/// The stored form is byte for byte that of the ordered set (`BTreeSet<String>`) this type
/// replaced, so windows checkpointed before still restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSet(AHashSet<String>);

impl UserSet {
    /// Adds `user` (copied only when it is new).
    pub fn insert(&mut self, user: &str) {
        if !self.0.contains(user) {
            self.0.insert(user.to_owned());
        }
    }

    /// Number of distinct users.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No user yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for UserSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<&String> = self.0.iter().collect();
        sorted.sort_unstable();
        s.collect_seq(sorted)
    }
}

impl<'de> Deserialize<'de> for UserSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let users = Vec::<String>::deserialize(d)?;
        Ok(UserSet(users.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn users() -> Vec<String> {
        ["u9", "u1", "", "ü-2", "u10", "u1"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stored_form_is_that_of_the_ordered_set() -> Result<(), postcard::Error> {
        let mut set = UserSet::default();
        users().iter().for_each(|u| set.insert(u));
        let ordered: BTreeSet<String> = users().into_iter().collect();
        assert_eq!(postcard::to_stdvec(&set)?, postcard::to_stdvec(&ordered)?);
        let restored: UserSet = postcard::from_bytes(&postcard::to_stdvec(&ordered)?)?;
        assert_eq!(restored, set);
        assert_eq!(restored.len(), 5);
        Ok(())
    }

    #[test]
    fn merge_counts_each_user_once() {
        let mut a = UserSet::default();
        let mut b = UserSet::default();
        ["u1", "u2"].iter().for_each(|u| a.insert(u));
        ["u2", "u3"].iter().for_each(|u| b.insert(u));
        DistinctUsers.merge(&mut a, &b);
        assert_eq!(DistinctUsers.result(&a), 3);
    }
}
