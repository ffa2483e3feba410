//! The keyed exchange between the copies of a job's chain that run on several workers.
//!
//! A job run with [`Runner::parallel_job`](crate::Runner::parallel_job) runs one copy of its chain
//! per worker, each on a contiguous share of every batch. At a [`KeyBy`](super::KeyBy) the copies
//! trade records: each record goes to the copy that owns its key (a hash of the key, modulo the
//! number of copies), as Flink's `keyBy` does across slots. Every copy takes part in every round —
//! once per batch, and once per watermark that reaches the step — so a round is complete when all
//! copies have put in their records. Each copy then takes what it was sent in share order, which
//! keeps every key's records in input order: what a keyed step computes for a key does not depend
//! on the number of copies. A copy may put in its next rounds before it takes this one (rounds in
//! flight, see [`KeyBy`](super::KeyBy)); it takes them in order.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::record::{Key, PartitionId, Record, Timestamp};

/// Fixed seeds: the owner of a key must be the same in every copy, and again after a restore in
/// the same binary (the copies of a restored job re-select their keys with it).
const SEEDS: [u64; 4] =
    [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344, 0xa409_3822_299f_31d0, 0x082e_fa98_ec4e_6c89];

/// The copy (of `copies`) that owns `key`.
///
/// # Examples
/// ```
/// use ferroflow_core::Key;
/// use ferroflow_core::operator::key_owner;
/// let k = Key::from("user-7");
/// assert_eq!(key_owner(&k, 1), 0);
/// assert_eq!(key_owner(&k, 4), key_owner(&k, 4), "the same in every copy");
/// assert!(key_owner(&k, 4) < 4);
/// ```
pub fn key_owner(key: &Key, copies: usize) -> usize {
    if copies <= 1 {
        return 0;
    }
    let h = ahash::RandomState::with_seeds(SEEDS[0], SEEDS[1], SEEDS[2], SEEDS[3]).hash_one(key.as_bytes());
    // `copies` fits in u64 and the remainder is below it, so both conversions are exact.
    (h % copies as u64) as usize
}

/// The exchanges of one job, handed to every copy of its chain in turn (see
/// [`Operator::connect_exchanges`](super::Operator::connect_exchanges)).
#[derive(Debug)]
pub struct ExchangeHub {
    copies: usize,
    exchanges: Vec<Arc<dyn Any + Send + Sync>>,
    /// Set when a worker stops: copies waiting for it give up instead of waiting for ever.
    broken: Arc<AtomicBool>,
    /// Set when two copies of the chain differ at an exchange (the factory built different chains).
    mismatch: Option<String>,
}

impl ExchangeHub {
    /// Exchanges between `copies` copies of a chain.
    pub(crate) fn new(copies: usize) -> Self {
        Self { copies, exchanges: Vec::new(), broken: Arc::new(AtomicBool::new(false)), mismatch: None }
    }

    /// The ports of copy `copy`: its chain takes one per key step, in order.
    pub(crate) fn ports(&mut self, copy: usize) -> ExchangePorts<'_> {
        ExchangePorts { hub: self, copy, next: 0 }
    }

    /// Set once to stop every round in progress (a worker stopped).
    pub(crate) fn breaker(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.broken)
    }

    /// The copies' chains differed, if they did.
    pub(crate) fn mismatch(&self) -> Option<&str> {
        self.mismatch.as_deref()
    }
}

/// The exchange ports of one copy of a chain, taken in step order.
#[derive(Debug)]
pub struct ExchangePorts<'h> {
    hub: &'h mut ExchangeHub,
    copy: usize,
    next: usize,
}

impl ExchangePorts<'_> {
    /// How many ports this copy's chain took (its key steps).
    pub fn taken(&self) -> usize {
        self.next
    }

    /// This copy's port on the next exchange of the chain (a key step calls it once).
    pub fn port<T: Send + 'static>(&mut self) -> Option<ExchangePort<T>> {
        let index = self.next;
        self.next += 1;
        let hub = &mut *self.hub;
        if hub.exchanges.len() <= index {
            let exchange: Arc<Exchange<T>> = Arc::new(Exchange::new(hub.copies, Arc::clone(&hub.broken)));
            hub.exchanges.push(exchange);
        }
        let any = Arc::clone(hub.exchanges.get(index)?);
        match any.downcast::<Exchange<T>>() {
            Ok(exchange) => Some(ExchangePort {
                outboxes: (0..hub.copies).map(|_| Vec::new()).collect(),
                exchange,
                copy: self.copy,
                round: 0,
            }),
            Err(_) => {
                hub.mismatch.get_or_insert(format!(
                    "copy {} of the job's chain has a different record type at key step {index} than copy 0: \
                     the factory must build the same chain every time",
                    self.copy
                ));
                None
            }
        }
    }
}

/// One copy's end of an exchange.
pub struct ExchangePort<T> {
    exchange: Arc<Exchange<T>>,
    copy: usize,
    round: u64,
    outboxes: Vec<Vec<Record<T>>>,
}

impl<T> std::fmt::Debug for ExchangePort<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangePort").field("copy", &self.copy).field("round", &self.round).finish()
    }
}

/// The exchange stopped because a worker did: the job is failing and restarts from its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeBroken;

impl<T: Send> ExchangePort<T> {
    /// Sends every record of `input` to the copy that owns its key, and appends to `out` what every
    /// copy sent this one, in share order. With `notes`, the copies also trade their event-time
    /// notes in the same round: `all_notes` gets every copy's, in copy order (every copy must pass
    /// notes in a round, or none).
    pub fn trade(
        &mut self,
        input: &mut Vec<Record<T>>,
        out: &mut Vec<Record<T>>,
        notes: Option<&mut Vec<Note>>,
        all_notes: &mut Vec<Note>,
    ) -> Result<(), ExchangeBroken> {
        let with_notes = notes.is_some();
        let round = self.put(input, notes)?;
        self.take(round, out, with_notes.then_some(all_notes))
    }

    /// Sends every record of `input` (and `notes`) to the copies in a new round and returns the
    /// round, without waiting for the other copies: [`take`](Self::take) it later, rounds in order.
    /// Copies take their rounds in order, and may put in up to [`IN_FLIGHT`] more rounds before
    /// they take one (a put waits while the round's cells still hold an older round not every copy
    /// took).
    pub fn put(
        &mut self,
        input: &mut Vec<Record<T>>,
        notes: Option<&mut Vec<Note>>,
    ) -> Result<u64, ExchangeBroken> {
        let copies = self.outboxes.len();
        for r in input.drain(..) {
            let to = key_owner(&r.key, copies);
            if let Some(outbox) = self.outboxes.get_mut(to) {
                outbox.push(r);
            }
        }
        let round = self.round;
        self.round = self.round.wrapping_add(1);
        self.exchange.put(self.copy, round, &mut self.outboxes, notes)?;
        Ok(round)
    }

    /// Waits until every copy has put in its part of `round`, then appends to `out` what they sent
    /// this one, in share order, and, with `all_notes`, every copy's notes in copy order.
    pub fn take(
        &mut self,
        round: u64,
        out: &mut Vec<Record<T>>,
        all_notes: Option<&mut Vec<Note>>,
    ) -> Result<(), ExchangeBroken> {
        self.exchange.take(self.copy, round, out, all_notes)
    }

    /// [`take`](Self::take) without waiting: false, and nothing taken, while a copy's part of
    /// `round` is missing.
    pub fn try_take(
        &mut self,
        round: u64,
        out: &mut Vec<Record<T>>,
        all_notes: Option<&mut Vec<Note>>,
    ) -> bool {
        self.exchange.try_take(self.copy, round, out, all_notes)
    }
}

/// A partition's highest event time in a run of a copy's share: what copies trade so that their
/// watermarks move together.
pub type Note = (PartitionId, Timestamp);

/// Cells of one round: `records[to][from]`, and each copy's notes.
struct Cells<T> {
    records: Vec<Vec<Vec<Record<T>>>>,
    notes: Vec<Vec<Note>>,
}

/// Rounds a copy may have put in and not taken from yet, beyond the one it just put in: a copy
/// that runs ahead of the others by this many shares waits for them.
pub(crate) const IN_FLIGHT: usize = 4;

/// Sets of cells, used by rounds in turn. More than a copy can have in flight (`IN_FLIGHT + 1`):
/// two copies each waiting for the other to free a set is then impossible.
const SLOTS: usize = IN_FLIGHT + 2;

/// A reusable meeting point for a fixed number of copies: in each round every copy puts in its
/// part, and once all have, each takes what it needs. Rounds use [`SLOTS`] sets of cells in turn;
/// a copy that puts in a round whose cells still hold an older round (not yet taken by every copy)
/// waits until they are free.
struct Rounds<S> {
    copies: usize,
    state: Mutex<RoundState<S>>,
    ready: Condvar,
    broken: Arc<AtomicBool>,
}

struct RoundState<S> {
    cells: [S; SLOTS],
    put: [usize; SLOTS],
    taken: [usize; SLOTS],
}

impl<S> Rounds<S> {
    fn new(copies: usize, broken: Arc<AtomicBool>, cells: impl Fn() -> S) -> Self {
        Self {
            copies,
            state: Mutex::new(RoundState {
                cells: std::array::from_fn(|_| cells()),
                put: [0; SLOTS],
                taken: [0; SLOTS],
            }),
            ready: Condvar::new(),
            broken,
        }
    }

    fn slot(round: u64) -> usize {
        // The remainder is below SLOTS, so it fits in usize.
        (round % SLOTS as u64) as usize
    }

    /// Waits on the copies' condition (with a timeout: a worker that stopped never puts in its
    /// part), or gives up when the exchange is broken.
    fn wait<'a>(
        &self,
        state: std::sync::MutexGuard<'a, RoundState<S>>,
    ) -> Result<std::sync::MutexGuard<'a, RoundState<S>>, ExchangeBroken> {
        if self.broken.load(Ordering::Acquire) {
            return Err(ExchangeBroken);
        }
        Ok(self
            .ready
            .wait_timeout(state, Duration::from_millis(50))
            .unwrap_or_else(PoisonError::into_inner)
            .0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoundState<S>> {
        // Cells hold plain values: ones left by a thread that panicked are still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts in this copy's part of `round`, without waiting for the others.
    fn put(&self, round: u64, put: impl FnOnce(&mut S)) -> Result<(), ExchangeBroken> {
        let b = Self::slot(round);
        let mut state = self.lock();
        // Every copy put in the slot's older round, and not all have taken from it yet.
        while state.put[b] == self.copies {
            state = self.wait(state)?;
        }
        put(&mut state.cells[b]);
        state.put[b] += 1;
        if state.put[b] == self.copies {
            self.ready.notify_all();
        }
        Ok(())
    }

    /// Waits until every copy has put in its part of `round`, then takes this copy's.
    fn take<R>(&self, round: u64, take: impl FnOnce(&mut S) -> R) -> Result<R, ExchangeBroken> {
        let b = Self::slot(round);
        let mut state = self.lock();
        while state.put[b] < self.copies {
            state = self.wait(state)?;
        }
        Ok(self.take_complete(&mut state, b, take))
    }

    /// Takes this copy's part of `round` when every copy has put in theirs; `None` otherwise.
    fn try_take<R>(&self, round: u64, take: impl FnOnce(&mut S) -> R) -> Option<R> {
        let b = Self::slot(round);
        let mut state = self.lock();
        (state.put[b] == self.copies).then(|| self.take_complete(&mut state, b, take))
    }

    fn take_complete<R>(&self, state: &mut RoundState<S>, b: usize, take: impl FnOnce(&mut S) -> R) -> R {
        let taken = take(&mut state.cells[b]);
        state.taken[b] += 1;
        if state.taken[b] == self.copies {
            state.put[b] = 0;
            state.taken[b] = 0;
            // A copy may be waiting to put in a later round that uses these cells.
            self.ready.notify_all();
        }
        taken
    }

    fn meet<R>(
        &self,
        round: u64,
        put: impl FnOnce(&mut S),
        take: impl FnOnce(&mut S) -> R,
    ) -> Result<R, ExchangeBroken> {
        self.put(round, put)?;
        self.take(round, take)
    }
}

struct Exchange<T> {
    rounds: Rounds<Cells<T>>,
}

impl<T> Exchange<T> {
    fn new(copies: usize, broken: Arc<AtomicBool>) -> Self {
        let cells = || Cells {
            records: (0..copies).map(|_| (0..copies).map(|_| Vec::new()).collect()).collect(),
            notes: (0..copies).map(|_| Vec::new()).collect(),
        };
        Self { rounds: Rounds::new(copies, broken, cells) }
    }

    /// Puts copy `from`'s outboxes (and notes) in `round`, without waiting for the others.
    fn put(
        &self,
        from: usize,
        round: u64,
        outboxes: &mut [Vec<Record<T>>],
        notes: Option<&mut Vec<Note>>,
    ) -> Result<(), ExchangeBroken> {
        self.rounds.put(round, |cells: &mut Cells<T>| {
            for (to, outbox) in outboxes.iter_mut().enumerate() {
                if let Some(cell) = cells.records.get_mut(to).and_then(|c| c.get_mut(from)) {
                    // The emptied cell's allocation comes back as the next round's outbox.
                    std::mem::swap(cell, outbox);
                }
            }
            if let (Some(notes), Some(cell)) = (notes, cells.notes.get_mut(from)) {
                cell.clear();
                cell.append(notes);
            }
        })
    }

    /// Waits for every copy's part of `round` and appends what was sent to copy `from` to `out`,
    /// in share order (and every copy's notes to `all_notes`, in copy order).
    fn take(
        &self,
        from: usize,
        round: u64,
        out: &mut Vec<Record<T>>,
        all_notes: Option<&mut Vec<Note>>,
    ) -> Result<(), ExchangeBroken> {
        self.rounds.take(round, |cells: &mut Cells<T>| Self::take_from(cells, from, out, all_notes))
    }

    /// [`take`](Self::take) if every copy's part of `round` is in; false otherwise.
    fn try_take(
        &self,
        from: usize,
        round: u64,
        out: &mut Vec<Record<T>>,
        all_notes: Option<&mut Vec<Note>>,
    ) -> bool {
        self.rounds
            .try_take(round, |cells: &mut Cells<T>| Self::take_from(cells, from, out, all_notes))
            .is_some()
    }

    fn take_from(
        cells: &mut Cells<T>,
        from: usize,
        out: &mut Vec<Record<T>>,
        all_notes: Option<&mut Vec<Note>>,
    ) {
        if let Some(inbound) = cells.records.get_mut(from) {
            for cell in inbound.iter_mut() {
                out.append(cell);
            }
        }
        if let Some(all_notes) = all_notes {
            all_notes.clear();
            for cell in &cells.notes {
                all_notes.extend_from_slice(cell);
            }
        }
    }
}

/// Every copy's notes of a round, gathered for all of them: each copy puts in its own and gets
/// everyone's, in copy order (the copies' event-time notes on their shares of a batch).
pub(crate) struct Gather<T> {
    rounds: Rounds<Vec<Vec<T>>>,
}

impl<T> std::fmt::Debug for Gather<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather").field("copies", &self.rounds.copies).finish()
    }
}

impl<T: Clone> Gather<T> {
    /// A gathering point for `copies` copies, given up when `broken` is set.
    pub(crate) fn new(copies: usize, broken: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(Self { rounds: Rounds::new(copies, broken, || (0..copies).map(|_| Vec::new()).collect()) })
    }

    /// Puts in copy `from`'s `notes` for round `round`; fills `all` with every copy's, in copy order.
    pub(crate) fn gather(
        &self,
        from: usize,
        round: u64,
        notes: &mut Vec<T>,
        all: &mut Vec<T>,
    ) -> Result<(), ExchangeBroken> {
        all.clear();
        let put = |cells: &mut Vec<Vec<T>>| {
            if let Some(cell) = cells.get_mut(from) {
                cell.clear();
                cell.append(notes);
            }
        };
        let take = |cells: &mut Vec<Vec<T>>| {
            for cell in cells.iter() {
                all.extend_from_slice(cell);
            }
        };
        self.rounds.meet(round, put, take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &str, n: u64) -> Record<u64> {
        let mut r = Record::new(n, 0);
        r.key = Key::from(key);
        r
    }

    #[test]
    fn every_record_reaches_its_key_owner_in_share_order() {
        let copies = 3;
        let mut hub = ExchangeHub::new(copies);
        let ports: Vec<ExchangePort<u64>> = (0..copies).filter_map(|c| hub.ports(c).port()).collect();
        assert_eq!(ports.len(), copies);
        let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        let threads: Vec<_> = ports
            .into_iter()
            .enumerate()
            .map(|(c, mut port)| {
                let keys = keys.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for round in 0..50u64 {
                        // Copy c's share of round `round`: records numbered so that share order is
                        // visible (copy 0's before copy 1's), some rounds empty.
                        let mut input: Vec<Record<u64>> = if (round + c as u64).is_multiple_of(4) {
                            Vec::new()
                        } else {
                            keys.iter()
                                .enumerate()
                                .map(|(i, k)| keyed(k, round * 10_000 + c as u64 * 1_000 + i as u64))
                                .collect()
                        };
                        let mut out = Vec::new();
                        assert_eq!(port.trade(&mut input, &mut out, None, &mut Vec::new()), Ok(()));
                        assert!(input.is_empty());
                        got.push(out);
                    }
                    got
                })
            })
            .collect();
        let mut seen = 0;
        for (c, t) in threads.into_iter().enumerate() {
            let rounds = t.join().unwrap_or_default();
            assert_eq!(rounds.len(), 50);
            for out in rounds {
                for r in &out {
                    assert_eq!(
                        key_owner(&r.key, copies),
                        c,
                        "a record went to a copy that does not own its key"
                    );
                }
                let order: Vec<u64> = out.iter().map(|r| r.payload).collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(order, sorted, "share order (copy 0's records first) is kept");
                seen += out.len();
            }
        }
        let expected: usize = (0..50u64)
            .map(|round| (0..copies as u64).filter(|c| !(round + c).is_multiple_of(4)).count() * 40)
            .sum();
        assert_eq!(seen, expected, "nothing lost, nothing doubled");
    }

    #[test]
    fn copies_running_ahead_with_rounds_in_flight_take_every_round_in_order() {
        let copies = 3;
        let rounds = 300u64;
        let mut hub = ExchangeHub::new(copies);
        let ports: Vec<ExchangePort<u64>> = (0..copies).filter_map(|c| hub.ports(c).port()).collect();
        let threads: Vec<_> = ports
            .into_iter()
            .enumerate()
            .map(|(c, mut port)| {
                std::thread::spawn(move || {
                    let mut in_flight = std::collections::VecDeque::new();
                    let mut taken: Vec<(u64, Vec<u64>, Vec<Note>)> = Vec::new();
                    let mut take = |port: &mut ExchangePort<u64>, round: u64, wait: bool| {
                        let (mut out, mut notes) = (Vec::new(), Vec::new());
                        let got = if wait {
                            port.take(round, &mut out, Some(&mut notes)) == Ok(())
                        } else {
                            port.try_take(round, &mut out, Some(&mut notes))
                        };
                        if got {
                            taken.push((round, out.iter().map(|r| r.payload).collect(), notes));
                        }
                        got
                    };
                    for round in 0..rounds {
                        // Copy 0 is slow now and then: the others run ahead by up to IN_FLIGHT.
                        if c == 0 && round % 37 == 0 {
                            std::thread::sleep(Duration::from_millis(3));
                        }
                        let mut input: Vec<Record<u64>> = (0..12u64)
                            .map(|i| keyed(&format!("k{i}"), round * 1_000 + c as u64 * 100 + i))
                            .collect();
                        let mut notes = vec![(c as PartitionId, round as Timestamp)];
                        let put = port.put(&mut input, Some(&mut notes));
                        assert_eq!(put, Ok(round));
                        in_flight.push_back(round);
                        let oldest = in_flight.front().copied().unwrap_or_default();
                        if take(&mut port, oldest, in_flight.len() > IN_FLIGHT) {
                            in_flight.pop_front();
                        }
                        assert!(in_flight.len() <= IN_FLIGHT);
                    }
                    while let Some(round) = in_flight.pop_front() {
                        assert!(take(&mut port, round, true));
                    }
                    taken
                })
            })
            .collect();
        for (c, t) in threads.into_iter().enumerate() {
            let taken = t.join().unwrap_or_default();
            assert_eq!(taken.iter().map(|(r, _, _)| *r).collect::<Vec<_>>(), (0..rounds).collect::<Vec<_>>());
            for (round, out, notes) in taken {
                let expected: Vec<u64> = (0..copies as u64)
                    .flat_map(|from| (0..12u64).map(move |i| round * 1_000 + from * 100 + i))
                    .filter(|n| key_owner(&Key::from(format!("k{}", n % 100).as_str()), copies) == c)
                    .collect();
                assert_eq!(out, expected, "copy {c}, round {round}: its keys' records, in share order");
                let all: Vec<Note> =
                    (0..copies).map(|from| (from as PartitionId, round as Timestamp)).collect();
                assert_eq!(notes, all, "every copy's notes of the round, in copy order");
            }
        }
    }

    #[test]
    fn a_stopped_copy_breaks_the_round_instead_of_hanging() -> Result<(), String> {
        let mut hub = ExchangeHub::new(2);
        let breaker = hub.breaker();
        let mut port: ExchangePort<u64> = hub.ports(0).port().ok_or("no port")?;
        let waiter = std::thread::spawn(move || {
            port.trade(&mut vec![keyed("a", 1)], &mut Vec::new(), None, &mut Vec::new())
        });
        std::thread::sleep(Duration::from_millis(20));
        breaker.store(true, Ordering::Release);
        assert_eq!(waiter.join().ok(), Some(Err(ExchangeBroken)));
        Ok(())
    }

    #[test]
    fn copies_built_differently_are_refused() {
        let mut hub = ExchangeHub::new(2);
        assert!(hub.ports(0).port::<u64>().is_some());
        assert!(hub.ports(1).port::<String>().is_none());
        assert!(hub.mismatch().is_some_and(|m| m.contains("copy 1")));
    }
}
