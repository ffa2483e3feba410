//! Every declared state of a keyed step, by name: declared once, reached by name and type,
//! written and read back together with a schema row per state.

use ahash::AHashSet;

use super::rows;
use super::schema;
use super::table::{Cell, KeyedTable, Table};
use super::ttl::{Now, StateTtl};
use crate::error::StateError;
use crate::record::{Key, Timestamp};
use crate::state::{SpillFailure, StateBackend, StateBudget};

/// Where a step's state rows say which format they are in. Steps of the first format (value
/// state only, values without stamps, no schema rows) have no such row.
const FORMAT_KEY: &[u8] = b"\x00format";
const FORMAT: u8 = 2;

/// Every table of a step, by name.
#[derive(Default)]
pub(in crate::operator) struct Tables {
    list: Vec<Box<dyn Table>>,
    /// Tables note changed keys (from the first snapshot or restore on).
    tracking: bool,
    /// States whose schema row the backend holds.
    recorded: AHashSet<&'static str>,
    /// The backend's rows are in the current format (its format row is written).
    current_format: bool,
    /// Names declared twice, as different states: refused at their first access.
    conflicting: Vec<&'static str>,
    /// The memory budget, once the step runs under one.
    budget: Option<StateBudget>,
    /// A spill-store failure outside a record (between batches): reported to the job at once,
    /// and every snapshot fails until a restore, so that no checkpoint misses what the store lost.
    failure: SpillFailure,
}

impl Tables {
    pub(super) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.list.iter().map(|t| t.name())
    }

    /// Declares a state. Declaring it again changes nothing; declaring its name again as another
    /// kind, type or time to live is refused at the first access.
    pub(super) fn declare<C: Cell>(&mut self, name: &'static str, ttl: Option<StateTtl>) {
        if let Some(t) = self.list.iter_mut().find(|t| t.name() == name) {
            if !t.holds(ttl, std::any::TypeId::of::<C>()) {
                self.conflicting.push(name);
            }
            return;
        }
        if name.len() > usize::from(u8::MAX) {
            return; // refused at the first access, with the reason
        }
        let mut table = KeyedTable::<C>::new(name, ttl, self.tracking);
        if let Some(budget) = &self.budget {
            table.attach(budget);
        }
        self.list.push(Box::new(table));
    }

    /// The table of state `name` holding `C`; an error when it was not declared, or declared as
    /// another kind or type, or with another time to live.
    pub(in crate::operator) fn table<C: Cell>(
        &mut self,
        name: &'static str,
        ttl: Option<StateTtl>,
    ) -> Result<&mut KeyedTable<C>, StateError> {
        if self.conflicting.contains(&name) {
            return Err(StateError::Backend(format!(
                "state '{name}' is declared twice, as different states (kind, type or time to live)"
            )));
        }
        // States are named by constants: the same `&'static str` each time, found without
        // comparing bytes (a name built elsewhere is compared by its bytes).
        let at = self.list.iter().position(|t| std::ptr::eq(t.name(), name));
        let at = at.or_else(|| self.list.iter().position(|t| t.name() == name));
        let Some(table) = at.and_then(|i| self.list.get_mut(i)) else {
            return Err(StateError::Backend(if name.len() > usize::from(u8::MAX) {
                format!("state name '{}…' is longer than 255 bytes", name.get(..32).unwrap_or_default())
            } else {
                format!("state '{name}' is not declared (declare it in KeyedFunction::declare)")
            }));
        };
        let kind = table.kind();
        let table = table.as_any_mut().downcast_mut::<KeyedTable<C>>().ok_or_else(|| {
            StateError::Backend(format!(
                "state '{name}' is used as a {} state of {} but was declared as a {kind} state of another type",
                C::KIND,
                std::any::type_name::<C>()
            ))
        })?;
        if table.ttl != ttl {
            return Err(StateError::Backend(format!(
                "state '{name}' is used with time to live {ttl:?} but was declared with {:?}",
                table.ttl
            )));
        }
        Ok(table)
    }

    /// Writes what changed since the last snapshot; the first one writes every value. It removes
    /// no rows: a job's backend starts empty or restored (which starts the noting), and copies of
    /// a job write their own keys into one backend, one after the other.
    pub(in crate::operator) fn snapshot(
        &mut self,
        ns: &str,
        state: &mut dyn StateBackend,
    ) -> Result<(), StateError> {
        self.failure.check()?;
        let all = !self.tracking;
        if all || !self.current_format {
            state.put(ns, FORMAT_KEY, &[FORMAT])?;
            self.current_format = true;
        }
        let mut buf = Vec::new();
        for t in &mut self.list {
            if all || !self.recorded.contains(t.name()) {
                rows::schema_key(&mut buf, t.name());
                state.put(ns, &buf, schema_row(t.as_ref()).as_bytes())?;
                self.recorded.insert(t.name());
            }
            t.snapshot(ns, state, &mut buf, all)?;
        }
        self.track();
        Ok(())
    }

    fn track(&mut self) {
        if !self.tracking {
            self.tracking = true;
            for t in &mut self.list {
                t.track();
            }
        }
    }

    /// Reads every state row of `ns` back into the declared tables, once the schema rows say
    /// that the declared kinds and types read them. Rows of the first format are read as value
    /// states stamped `first_format_stamp`, and written again in the current format at the next
    /// snapshot.
    pub(in crate::operator) fn restore(
        &mut self,
        ns: &str,
        state: &dyn StateBackend,
        first_format_stamp: Timestamp,
    ) -> Result<(), StateError> {
        for t in &mut self.list {
            t.clear()?;
        }
        self.recorded.clear();
        self.failure.clear();
        self.track();
        self.current_format = match state.get(ns, FORMAT_KEY)?.as_deref() {
            None => false,
            Some([FORMAT]) => true,
            Some(other) => {
                return Err(StateError::Corrupt {
                    what: format!(
                        "the state of step '{ns}' is in format {other:?}, which this version does not read (it reads 1 and {FORMAT})"
                    ),
                });
            }
        };
        for kv in state.scan_prefix(ns, &[rows::SCHEMA_TAG])? {
            let (k, v) = kv?;
            let (name, _) = rows::split_named(&k)?;
            // A state the function no longer declares may keep its schema row: only its values
            // refuse the restore (below).
            let Ok(table) = self.declared(ns, name) else {
                tracing::warn!(
                    step = ns,
                    state = name,
                    "the checkpoint names a state the function no longer declares"
                );
                continue;
            };
            let stored = String::from_utf8_lossy(&v);
            let declared = schema_row(table);
            let (stored, declared) = (SchemaRow::parse(&stored), SchemaRow::parse(&declared));
            if let Some(problem) = stored.refuses(&declared) {
                return Err(StateError::Corrupt {
                    what: format!(
                        "state '{name}' of step '{ns}' {problem}: keep the declaration, or give the new state another name"
                    ),
                });
            }
            let name = table.name();
            self.recorded.insert(name);
        }
        for kv in state.scan_prefix(ns, &[rows::CELL_TAG])? {
            let (k, v) = kv?;
            let (name, key) = rows::split_named(&k)?;
            let key = Key::from(key);
            let current = self.current_format;
            let table = self.declared_mut(ns, name)?;
            if current {
                table.restore_entry(key, v.as_slice())?;
            } else {
                table.restore_first_format(key, v.as_slice(), first_format_stamp)?;
            }
        }
        Ok(())
    }

    fn declared(&self, ns: &str, name: &str) -> Result<&dyn Table, StateError> {
        self.list.iter().find(|t| t.name() == name).map(|t| t.as_ref()).ok_or_else(|| undeclared(ns, name))
    }

    fn declared_mut(&mut self, ns: &str, name: &str) -> Result<&mut Box<dyn Table>, StateError> {
        self.list.iter_mut().find(|t| t.name() == name).ok_or_else(|| undeclared(ns, name))
    }

    /// Hands a spill-store failure to the job, which fails before the results go out.
    pub(in crate::operator) fn report_failure(&mut self, ctx: &mut crate::operator::Context) {
        self.failure.report(ctx);
    }

    pub(in crate::operator) fn retain_keys(&mut self, keep: &dyn Fn(&Key) -> bool) {
        for t in &mut self.list {
            if let Err(e) = t.retain_keys(keep) {
                self.failure.set(e);
            }
        }
    }

    /// Counts every table's memory against `budget`, spilling beyond it (a second budget is
    /// ignored).
    pub(in crate::operator) fn attach(&mut self, budget: &StateBudget) {
        if self.budget.is_some() {
            return; // the first budget stays: every table of the step on one
        }
        self.budget = Some(budget.clone());
        for t in &mut self.list {
            t.attach(budget);
        }
    }

    /// Brings the spilled ones among `keys` back in one read per table (before a batch runs).
    pub(in crate::operator) fn preload(&mut self, keys: &[&Key]) {
        if self.budget.is_none() {
            return;
        }
        for t in &mut self.list {
            t.preload(keys);
        }
    }

    /// Whether the tables run under a memory budget.
    pub(in crate::operator) fn budgeted(&self) -> bool {
        self.budget.is_some()
    }

    /// Spills cold keys while the budget is exceeded. A failed write keeps them in memory (over
    /// the budget, nothing lost).
    pub(in crate::operator) fn spill(&mut self) {
        if self.budget.is_none() {
            return;
        }
        for t in &mut self.list {
            if let Err(e) = t.spill() {
                tracing::warn!(state = t.name(), error = %e, "cannot spill keyed state: it stays in memory");
            }
        }
    }

    /// Removes expired values of the tables whose clean-up is due.
    pub(in crate::operator) fn sweep(&mut self, now: &Now) {
        for t in &mut self.list {
            t.sweep(now);
        }
    }

    /// Keys holding a value, over every table.
    pub(in crate::operator) fn len(&self) -> usize {
        self.list.iter().map(|t| t.len()).sum()
    }
}

/// A schema row: the state's kind, the clock its stamps are taken in, the shape of its values.
fn schema_row(t: &dyn Table) -> String {
    format!("{}\n{}\n{}", t.kind(), t.stamp_clock(), t.shape())
}

struct SchemaRow<'a> {
    kind: &'a str,
    clock: &'a str,
    shape: &'a str,
}

impl<'a> SchemaRow<'a> {
    fn parse(row: &'a str) -> Self {
        let mut parts = row.splitn(3, '\n');
        let kind = parts.next().unwrap_or_default();
        let clock = parts.next().unwrap_or_default();
        Self { kind, clock, shape: parts.next().unwrap_or(schema::UNKNOWN) }
    }

    /// Why rows written under this schema cannot be read as `declared`, if they cannot.
    fn refuses(&self, declared: &SchemaRow<'_>) -> Option<String> {
        if self.kind != declared.kind {
            return Some(format!(
                "was written as a {} state, the function declares a {} state",
                self.kind, declared.kind
            ));
        }
        if !schema::compatible(self.shape, declared.shape) {
            return Some(format!(
                "was written as values of shape {}, the function declares values of shape {}",
                self.shape, declared.shape
            ));
        }
        if self.clock != declared.clock {
            return Some(format!(
                "has its values stamped in {} time, its time to live now counts in {} time",
                self.clock, declared.clock
            ));
        }
        None
    }
}

fn undeclared(ns: &str, name: &str) -> StateError {
    StateError::Corrupt {
        what: format!(
            "the checkpoint holds state '{name}' of step '{ns}', which the function does not declare \
             (declare it in KeyedFunction::declare)"
        ),
    }
}
