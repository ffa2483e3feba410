//! Incremental aggregation: the [`Aggregator`] trait and the built-ins (count, sum, min, max, avg,
//! and [`Stats`] for all of them at once). Tuples of aggregators are aggregators too.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Folds records into an accumulator one at a time; windows keep only the accumulator.
///
/// `merge` combines two accumulators (session windows merge when they overlap). The accumulator is
/// serializable so windows can be checkpointed.
///
/// # Examples
/// A user-defined aggregator that keeps the longest string:
/// ```
/// use ferroflow_core::window::Aggregator;
/// #[derive(Debug)]
/// struct Longest;
/// impl Aggregator<String> for Longest {
///     type Acc = String;
///     type Output = String;
///     fn create(&self) -> String { String::new() }
///     fn add(&self, acc: &mut String, v: &String) { if v.len() > acc.len() { *acc = v.clone(); } }
///     fn merge(&self, acc: &mut String, other: &String) { self.add(acc, other) }
///     fn result(&self, acc: &String) -> String { acc.clone() }
/// }
/// let mut acc = Longest.create();
/// Longest.add(&mut acc, &"ab".to_string());
/// Longest.add(&mut acc, &"abc".to_string());
/// assert_eq!(Longest.result(&acc), "abc");
/// ```
pub trait Aggregator<T>: Send + 'static {
    /// Running state per key and window.
    type Acc: Clone + Send + Serialize + DeserializeOwned + 'static;
    /// What a window emits.
    type Output: Clone + Send + Serialize + 'static;
    /// An empty accumulator.
    fn create(&self) -> Self::Acc;
    /// Folds one input in.
    fn add(&self, acc: &mut Self::Acc, input: &T);
    /// Folds another accumulator in.
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc);
    /// The current result.
    fn result(&self, acc: &Self::Acc) -> Self::Output;
}

/// Counts records.
///
/// # Examples
/// ```
/// use ferroflow_core::window::{Aggregator, Count};
/// let mut acc = Aggregator::<&str>::create(&Count);
/// Count.add(&mut acc, &"x");
/// assert_eq!(Aggregator::<&str>::result(&Count, &acc), 1);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl<T> Aggregator<T> for Count {
    type Acc = u64;
    type Output = u64;
    fn create(&self) -> u64 {
        0
    }
    #[inline]
    fn add(&self, acc: &mut u64, _: &T) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: &u64) {
        *acc += other;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

macro_rules! value_aggregator {
    ($(#[$doc:meta])* $name:ident, $acc:ty, $init:expr, $add:expr, $merge:expr, $out:ty, $result:expr) => {
        $(#[$doc])*
        pub struct $name<T, F> {
            f: F,
            _t: PhantomData<fn(&T)>,
        }

        impl<T, F: Fn(&T) -> f64> $name<T, F> {
            /// Aggregates the value `f` extracts from each record.
            pub fn of(f: F) -> Self {
                Self { f, _t: PhantomData }
            }
        }

        impl<T, F> std::fmt::Debug for $name<T, F> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl<T: 'static, F: Fn(&T) -> f64 + Send + 'static> Aggregator<T> for $name<T, F> {
            type Acc = $acc;
            type Output = $out;
            fn create(&self) -> $acc {
                $init
            }
            #[inline]
            fn add(&self, acc: &mut $acc, input: &T) {
                let v = (self.f)(input);
                #[allow(clippy::redundant_closure_call)]
                ($add)(acc, v)
            }
            fn merge(&self, acc: &mut $acc, other: &$acc) {
                #[allow(clippy::redundant_closure_call)]
                ($merge)(acc, other)
            }
            fn result(&self, acc: &$acc) -> $out {
                #[allow(clippy::redundant_closure_call)]
                ($result)(acc)
            }
        }
    };
}

value_aggregator!(
    /// Sums a value extracted from each record.
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::window::{Aggregator, Sum};
    /// let sum = Sum::of(|x: &f64| *x);
    /// let mut acc = sum.create();
    /// sum.add(&mut acc, &1.5);
    /// sum.add(&mut acc, &2.0);
    /// assert_eq!(sum.result(&acc), 3.5);
    /// ```
    Sum, f64, 0.0, |a: &mut f64, v: f64| *a += v, |a: &mut f64, o: &f64| *a += *o, f64, |a: &f64| *a
);

value_aggregator!(
    /// The smallest value extracted from the records (`None` for an empty window).
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::window::{Aggregator, Min};
    /// let min = Min::of(|x: &f64| *x);
    /// let mut acc = min.create();
    /// min.add(&mut acc, &3.0);
    /// min.add(&mut acc, &-1.0);
    /// assert_eq!(min.result(&acc), Some(-1.0));
    /// ```
    Min, Option<f64>, None,
    |a: &mut Option<f64>, v: f64| *a = Some(a.map_or(v, |m| m.min(v))),
    |a: &mut Option<f64>, o: &Option<f64>| if let Some(v) = *o { *a = Some(a.map_or(v, |m| m.min(v))) },
    Option<f64>, |a: &Option<f64>| *a
);

value_aggregator!(
    /// The largest value extracted from the records (`None` for an empty window).
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::window::{Aggregator, Max};
    /// let max = Max::of(|x: &f64| *x);
    /// let mut acc = max.create();
    /// max.add(&mut acc, &3.0);
    /// max.add(&mut acc, &-1.0);
    /// assert_eq!(max.result(&acc), Some(3.0));
    /// ```
    Max, Option<f64>, None,
    |a: &mut Option<f64>, v: f64| *a = Some(a.map_or(v, |m| m.max(v))),
    |a: &mut Option<f64>, o: &Option<f64>| if let Some(v) = *o { *a = Some(a.map_or(v, |m| m.max(v))) },
    Option<f64>, |a: &Option<f64>| *a
);

value_aggregator!(
    /// The mean of a value extracted from the records (`None` for an empty window).
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::window::{Aggregator, Avg};
    /// let avg = Avg::of(|x: &f64| *x);
    /// let mut acc = avg.create();
    /// avg.add(&mut acc, &1.0);
    /// avg.add(&mut acc, &2.0);
    /// assert_eq!(avg.result(&acc), Some(1.5));
    /// ```
    Avg, (f64, u64), (0.0, 0),
    |a: &mut (f64, u64), v: f64| { a.0 += v; a.1 += 1; },
    |a: &mut (f64, u64), o: &(f64, u64)| { a.0 += o.0; a.1 += o.1; },
    Option<f64>, |a: &(f64, u64)| if a.1 == 0 { None } else { Some(a.0 / a.1 as f64) }
);

/// Count, sum, min, max and mean of one value, in one accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatsValue {
    /// Number of records.
    pub count: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl StatsValue {
    /// The mean (`None` when empty).
    pub fn avg(&self) -> Option<f64> {
        if self.count == 0 { None } else { Some(self.sum / self.count as f64) }
    }
}

impl Default for StatsValue {
    fn default() -> Self {
        Self { count: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

value_aggregator!(
    /// Count, sum, min and max of a value in one accumulator (the mean is [`StatsValue::avg`]).
    ///
    /// # Examples
    /// ```
    /// use ferroflow_core::window::{Aggregator, Stats};
    /// let stats = Stats::of(|x: &f64| *x);
    /// let mut acc = stats.create();
    /// for v in [4.0, 1.0, 7.0] { stats.add(&mut acc, &v); }
    /// let s = stats.result(&acc);
    /// assert_eq!((s.count, s.sum, s.min, s.max), (3, 12.0, 1.0, 7.0));
    /// assert_eq!(s.avg(), Some(4.0));
    /// ```
    Stats, StatsValue, StatsValue::default(),
    |a: &mut StatsValue, v: f64| { a.count += 1; a.sum += v; a.min = a.min.min(v); a.max = a.max.max(v); },
    |a: &mut StatsValue, o: &StatsValue| {
        a.count += o.count; a.sum += o.sum; a.min = a.min.min(o.min); a.max = a.max.max(o.max);
    },
    StatsValue, |a: &StatsValue| *a
);

macro_rules! tuple_aggregator {
    ($($name:ident $idx:tt),+) => {
        impl<T, $($name: Aggregator<T>),+> Aggregator<T> for ($($name,)+) {
            type Acc = ($($name::Acc,)+);
            type Output = ($($name::Output,)+);
            fn create(&self) -> Self::Acc {
                ($(self.$idx.create(),)+)
            }
            #[inline]
            fn add(&self, acc: &mut Self::Acc, input: &T) {
                $(self.$idx.add(&mut acc.$idx, input);)+
            }
            fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
                $(self.$idx.merge(&mut acc.$idx, &other.$idx);)+
            }
            fn result(&self, acc: &Self::Acc) -> Self::Output {
                ($(self.$idx.result(&acc.$idx),)+)
            }
        }
    };
}

tuple_aggregator!(A 0, B 1);
tuple_aggregator!(A 0, B 1, C 2);
tuple_aggregator!(A 0, B 1, C 2, D 3);
tuple_aggregator!(A 0, B 1, C 2, D 3, E 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_aggregate_each_part_and_merge() {
        let agg = (Count, Sum::of(|x: &f64| *x), Max::of(|x: &f64| *x));
        let mut a = agg.create();
        let mut b = agg.create();
        agg.add(&mut a, &1.0);
        agg.add(&mut b, &5.0);
        agg.add(&mut b, &2.0);
        agg.merge(&mut a, &b);
        assert_eq!(agg.result(&a), (3, 8.0, Some(5.0)));
    }

    #[test]
    fn empty_min_max_avg_are_none() {
        assert_eq!(Min::of(|x: &f64| *x).result(&None), None);
        assert_eq!(Avg::of(|x: &f64| *x).result(&(0.0, 0)), None);
        assert_eq!(StatsValue::default().avg(), None);
    }
}
