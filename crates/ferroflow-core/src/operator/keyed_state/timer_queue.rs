//! The timers of one domain held in memory, in time order, then key order: a wheel of short
//! slots over the next seconds, where nearly every timer is set and fired, and a B-tree for the
//! others.
//!
//! A join or a window sets a timer for nearly every record, a few seconds after the watermark,
//! and fires them in order as it passes. In a B-tree, each of them searched four or five nodes
//! on the way in and rebalanced them on the way out; in the wheel, its slot is found by
//! dividing its time, and it joins, and leaves, a short sorted queue that is
//! reused as the wheel turns.

use std::collections::{BTreeMap, VecDeque};

use smallvec::SmallVec;

use super::spilled_timers::Timer;
use crate::record::{Key, Timestamp};
use crate::state::StateBudget;

/// Time a wheel slot covers, in ms.
const SLOT_MS: i64 = 16;

/// Slots in the wheel: it holds the timers of the 65.5 s from its earliest slot on (two inputs
/// of a join may be that far apart, and their timers with them).
const WHEEL_LEN: usize = 4_096;
const SLOTS: i64 = WHEEL_LEN as i64;

/// What a timer costs in memory, as the budget counts it (an entry of an ordered set).
pub(super) fn cost(key: &Key) -> usize {
    StateBudget::entry_cost(std::mem::size_of::<Timer>(), key, 0)
}

/// The slot of a time.
fn slot(at: Timestamp) -> i64 {
    at.div_euclid(SLOT_MS)
}

/// Where slot `s` lies in the wheel.
fn index(s: i64) -> usize {
    usize::try_from(s.rem_euclid(SLOTS)).unwrap_or(0)
}

/// The keys of the timers at one time outside the wheel, sorted: mostly one or two, held in the
/// time's entry.
type Bucket = SmallVec<[Key; 2]>;

/// An ordered set of timers that knows what it costs.
///
/// The wheel holds the timers of the slots `[base, base + SLOTS)`; the B-tree (`far`) holds
/// every other one, before or after them. When the wheel holds timers, its first slot holds
/// some: the earliest timer is found without a search.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Slot `s` at `index(s)`, sorted: timers come mostly in time order and join the back, and
    /// leave from the front. Allocated with the first timer, and each slot's queue (up to
    /// [`KEPT_ROOM`] once empty) kept as the wheel turns.
    wheel: Vec<VecDeque<Timer>>,
    /// The wheel's first slot.
    base: i64,
    /// Timers in the wheel.
    in_wheel: usize,
    /// Timers outside the wheel's slots, by time, each time's keys sorted beside it.
    far: BTreeMap<Timestamp, Bucket>,
    len: usize,
    /// What the timers cost, as the budget counts it.
    pub(super) bytes: usize,
}

/// Most timers a slot keeps room for once it is empty: a burst at one time (a window's end for
/// every key) must not hold its room for as long as the wheel turns.
const KEPT_ROOM: usize = 64;

/// Frees an emptied slot's room beyond [`KEPT_ROOM`].
fn let_go_of_room(timers: &mut VecDeque<Timer>) {
    if timers.is_empty() && timers.capacity() > KEPT_ROOM {
        *timers = VecDeque::new();
    }
}

/// Puts the timer `(at, key)` in its place in a slot; `false` if it was there.
fn place(timers: &mut VecDeque<Timer>, at: Timestamp, key: Key) -> bool {
    // Mostly the latest of its slot so far.
    if timers.back().is_none_or(|last| order(last, at, &key).is_lt()) {
        timers.push_back((at, key));
        return true;
    }
    let Err(i) = timers.binary_search_by(|probe| order(probe, at, &key)) else { return false };
    timers.insert(i, (at, key));
    true
}

/// Where `probe` lies in a slot's order from the timer `(at, key)`.
fn order(probe: &Timer, at: Timestamp, key: &Key) -> std::cmp::Ordering {
    (probe.0, &probe.1).cmp(&(at, key))
}

impl Queue {
    /// Adds a timer; `false` if it was there.
    pub(super) fn insert(&mut self, (at, key): Timer) -> bool {
        if self.in_wheel == 0 {
            self.turn_to(slot(at));
        }
        let bytes = cost(&key);
        if let Some(timers) = self.slot_mut(at) {
            if !place(timers, at, key) {
                return false;
            }
            self.in_wheel = self.in_wheel.saturating_add(1);
        } else {
            let bucket = self.far.entry(at).or_default();
            let Err(i) = bucket.binary_search(&key) else { return false };
            bucket.insert(i, key);
        }
        self.bytes = self.bytes.saturating_add(bytes);
        self.len = self.len.saturating_add(1);
        true
    }

    /// Removes a timer; `false` if it was not there.
    pub(super) fn remove(&mut self, (at, key): &Timer) -> bool {
        if let Some(timers) = self.slot_mut(*at) {
            let Ok(i) = timers.binary_search_by(|probe| order(probe, *at, key)) else {
                return false;
            };
            timers.remove(i);
            let_go_of_room(timers);
            self.in_wheel = self.in_wheel.saturating_sub(1);
            self.settle();
        } else {
            let Some(bucket) = self.far.get_mut(at) else { return false };
            let Ok(i) = bucket.binary_search(key) else { return false };
            bucket.remove(i);
            if bucket.is_empty() {
                self.far.remove(at);
            }
        }
        self.len = self.len.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(cost(key));
        true
    }

    /// The earliest timer is in `far` (before the wheel's slots, or the wheel is empty).
    fn first_is_far(&self) -> bool {
        self.far.first_key_value().is_some_and(|(at, _)| self.in_wheel == 0 || slot(*at) < self.base)
    }

    pub(super) fn pop_first(&mut self) -> Option<Timer> {
        let timer = if self.first_is_far() {
            let mut first = self.far.first_entry()?;
            let at = *first.key();
            let bucket = first.get_mut();
            // No bucket is left empty.
            let key = (!bucket.is_empty()).then(|| bucket.remove(0))?;
            if bucket.is_empty() {
                first.remove();
            }
            (at, key)
        } else {
            let timers = self.slot_at(self.base)?;
            let timer = timers.pop_front()?;
            let_go_of_room(timers);
            self.in_wheel = self.in_wheel.saturating_sub(1);
            self.settle();
            timer
        };
        self.len = self.len.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(cost(&timer.1));
        Some(timer)
    }

    pub(super) fn first(&self) -> Option<(Timestamp, &Key)> {
        if self.first_is_far() {
            return self.far.first_key_value().and_then(|(at, bucket)| Some((*at, bucket.first()?)));
        }
        let wheel_first = self.wheel.get(index(self.base)).and_then(|timers| timers.front());
        wheel_first.map(|(at, key)| (*at, key))
    }

    pub(super) fn contains(&self, (at, key): &Timer) -> bool {
        match self.wheel_slot(*at).and_then(|i| self.wheel.get(i)) {
            Some(timers) => timers.binary_search_by(|probe| order(probe, *at, key)).is_ok(),
            None => self.far.get(at).is_some_and(|bucket| bucket.binary_search(key).is_ok()),
        }
    }

    /// Every timer, in time order, then key order.
    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = (Timestamp, &Key)> {
        // Nothing in `far` lies within the wheel's slots.
        let start = self.base.saturating_mul(SLOT_MS);
        fn in_far<'a>(
            (at, bucket): (&'a Timestamp, &'a Bucket),
        ) -> impl DoubleEndedIterator<Item = (Timestamp, &'a Key)> {
            bucket.iter().map(move |key| (*at, key))
        }
        let (wrapped, from_base) = self.wheel.split_at_checked(index(self.base)).unwrap_or_default();
        let wheel =
            from_base.iter().chain(wrapped).flat_map(|timers| timers.iter().map(|(at, key)| (*at, key)));
        self.far.range(..start).flat_map(in_far).chain(wheel).chain(self.far.range(start..).flat_map(in_far))
    }

    /// Moves `other`'s timers here (one by one: `other` is the small one).
    pub(super) fn append(&mut self, other: &mut Queue) {
        if other.len == 0 {
            return;
        }
        for (at, bucket) in std::mem::take(&mut other.far) {
            for key in bucket {
                self.insert((at, key));
            }
        }
        for timers in &mut other.wheel {
            for timer in timers.drain(..) {
                self.insert(timer);
            }
        }
        other.in_wheel = 0;
        other.len = 0;
        other.bytes = 0;
    }

    pub(super) fn retain(&mut self, keep: &dyn Fn(&Key) -> bool) {
        self.far.retain(|_, bucket| {
            bucket.retain(|key| keep(key));
            !bucket.is_empty()
        });
        for timers in &mut self.wheel {
            timers.retain(|(_, key)| keep(key));
            let_go_of_room(timers);
        }
        self.in_wheel = self.wheel.iter().map(VecDeque::len).sum();
        self.len = self.far.values().map(|b| b.len()).sum::<usize>().saturating_add(self.in_wheel);
        self.bytes = self.iter().map(|(_, key)| cost(key)).sum();
        self.settle();
    }

    pub(super) fn clear(&mut self) {
        self.far.clear();
        self.wheel = Vec::new();
        self.in_wheel = 0;
        self.len = 0;
        self.bytes = 0;
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Where `at` lies in the wheel, if its slot is one of the wheel's.
    fn wheel_slot(&self, at: Timestamp) -> Option<usize> {
        // Slots lie within `i64::MIN / SLOT_MS ..= i64::MAX / SLOT_MS`: no difference overflows.
        let ahead = slot(at).checked_sub(self.base)?;
        (0..SLOTS).contains(&ahead).then(|| index(slot(at)))
    }

    fn slot_mut(&mut self, at: Timestamp) -> Option<&mut VecDeque<Timer>> {
        let i = self.wheel_slot(at)?;
        self.wheel.get_mut(i)
    }

    /// The timers of slot `s`, which must be one of the wheel's.
    fn slot_at(&mut self, s: i64) -> Option<&mut VecDeque<Timer>> {
        self.wheel.get_mut(index(s))
    }

    /// Makes `first` the wheel's first slot; the wheel is empty. The timers of `far` in the
    /// wheel's new slots move in.
    fn turn_to(&mut self, first: i64) {
        if self.wheel.is_empty() {
            self.wheel.resize_with(WHEEL_LEN, VecDeque::new);
        } else if first == self.base {
            return;
        }
        self.base = first;
        self.move_in(first);
    }

    /// After a timer left the wheel: turns it to its first slot holding a timer, if any. The
    /// timers of `far` in the slots it turns to move in.
    fn settle(&mut self) {
        if self.in_wheel == 0 || self.wheel.get(index(self.base)).is_none_or(|t| !t.is_empty()) {
            return;
        }
        let Some(ahead) =
            (1..SLOTS).find(|d| self.wheel.get(index(self.base + d)).is_some_and(|t| !t.is_empty()))
        else {
            return;
        };
        let old_end = self.base + SLOTS;
        self.base += ahead;
        self.move_in(old_end);
    }

    /// Moves the timers of `far` in the wheel's slots from `from` on into the wheel.
    fn move_in(&mut self, from: i64) {
        let Some(start) = from.checked_mul(SLOT_MS) else { return };
        let end = self.base + SLOTS;
        let times: SmallVec<[Timestamp; 8]> =
            self.far.range(start..).map(|(at, _)| *at).take_while(|at| slot(*at) < end).collect();
        let mut moved = 0usize;
        for at in times {
            let Some(bucket) = self.far.remove(&at) else { continue };
            let Some(timers) = self.slot_mut(at) else { continue };
            for key in bucket {
                moved = moved.saturating_add(usize::from(place(timers, at, key)));
            }
        }
        self.in_wheel = self.in_wheel.saturating_add(moved);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Timestamp, u8),
        Remove(Timestamp, u8),
        Pop,
        Retain(u8),
        Append(Vec<(Timestamp, u8)>),
        Clear,
    }

    /// Times near one another (in and out of the wheel's reach), far apart, and at the ends of
    /// time.
    fn time() -> impl Strategy<Value = Timestamp> {
        prop_oneof![
            6 => 0i64..40_000,
            1 => -40_000i64..0,
            1 => any::<i64>(),
            1 => (i64::MAX - 40_000)..=i64::MAX,
            1 => i64::MIN..(i64::MIN + 40_000),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (time(), 0u8..6).prop_map(|(at, k)| Op::Insert(at, k)),
            2 => (time(), 0u8..6).prop_map(|(at, k)| Op::Remove(at, k)),
            5 => Just(Op::Pop),
            1 => (0u8..6).prop_map(Op::Retain),
            1 => proptest::collection::vec((time(), 0u8..6), 0..5).prop_map(Op::Append),
            1 => Just(Op::Clear),
        ]
    }

    fn key(k: u8) -> Key {
        Key::from(format!("key-{k}"))
    }

    proptest! {
        /// The queue keeps, orders and counts its timers as an ordered set of (time, key) pairs.
        #[test]
        fn behaves_as_an_ordered_set(ops in proptest::collection::vec(op(), 0..400)) {
            let (mut queue, mut set) = (Queue::default(), BTreeSet::<Timer>::new());
            for op in ops {
                match op {
                    Op::Insert(at, k) => prop_assert_eq!(queue.insert((at, key(k))), set.insert((at, key(k)))),
                    Op::Remove(at, k) => prop_assert_eq!(queue.remove(&(at, key(k))), set.remove(&(at, key(k)))),
                    Op::Pop => prop_assert_eq!(queue.pop_first(), set.pop_first()),
                    Op::Retain(k) => {
                        let keep = |key: &Key| key.as_bytes().last() != Some(&(b'0' + k));
                        queue.retain(&keep);
                        set.retain(|(_, key)| keep(key));
                    }
                    Op::Append(timers) => {
                        let mut other = Queue::default();
                        for (at, k) in timers {
                            other.insert((at, key(k)));
                            set.insert((at, key(k)));
                        }
                        queue.append(&mut other);
                        prop_assert_eq!(other.len(), 0);
                    }
                    Op::Clear => {
                        queue.clear();
                        set.clear();
                    }
                }
                prop_assert_eq!(queue.len(), set.len());
                prop_assert_eq!(queue.first(), set.first().map(|(at, key)| (*at, key)));
                let cost_of_set: usize = set.iter().map(|(_, key)| cost(key)).sum();
                prop_assert_eq!(queue.bytes, cost_of_set);
                let probe = set.iter().nth(set.len() / 2).cloned();
                if let Some(timer) = probe {
                    prop_assert!(queue.contains(&timer));
                }
            }
            let forward: Vec<(Timestamp, &Key)> = queue.iter().collect();
            prop_assert_eq!(forward, set.iter().map(|(at, key)| (*at, key)).collect::<Vec<_>>());
            let backward: Vec<(Timestamp, &Key)> = queue.iter().rev().collect();
            prop_assert_eq!(backward, set.iter().rev().map(|(at, key)| (*at, key)).collect::<Vec<_>>());
            while let Some(timer) = queue.pop_first() {
                prop_assert_eq!(Some(timer), set.pop_first());
            }
            prop_assert!(set.is_empty());
        }
    }

    /// A burst of timers at one time lets go of its room once fired.
    #[test]
    fn an_emptied_slot_lets_go_of_a_bursts_room() {
        let mut queue = Queue::default();
        for k in 0..10_000u32 {
            queue.insert((1_000, Key::from(u64::from(k))));
        }
        let room = |q: &Queue| q.wheel.iter().map(VecDeque::capacity).sum::<usize>();
        assert!(room(&queue) >= 10_000);
        while queue.pop_first().is_some() {}
        assert!(room(&queue) <= KEPT_ROOM, "{} timers of room kept", room(&queue));
        queue.insert((1_000, key(1)));
        queue.clear();
        assert_eq!(room(&queue), 0);
    }

    /// Timers set as a watermark moves, a few seconds after it, stay in the wheel: the B-tree is
    /// left for the rare timer out of its reach.
    #[test]
    fn timers_a_few_seconds_ahead_stay_in_the_wheel() {
        let mut queue = Queue::default();
        for i in 0..100_000i64 {
            queue.insert((i + 5_000, key(u8::try_from(i % 6).unwrap_or(0))));
            if i >= 1_000 {
                assert!(queue.pop_first().is_some());
            }
            assert!(queue.far.is_empty(), "timer {i} went to the B-tree");
        }
        assert_eq!(queue.len(), 1_000);
    }
}
