//! CPU time of the whole process, for the benchmarks' per-event figures.

/// User + system CPU seconds this process has used so far, all threads included (also threads that
/// have ended), from `/proc/self/stat`; 0 where that cannot be read.
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 1..)) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND
}

/// The kernel's USER_HZ, which is 100 on every Linux platform Rust targets.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The line the benchmarks print after a timed run of `events` events that took `elapsed_s`
/// seconds and `cpu_seconds` of CPU: how much of the machine the run kept busy, and what one event
/// cost in CPU over all threads.
pub fn usage_line(cpu_seconds: f64, elapsed_s: f64, events: u64) -> String {
    format!(
        "cpu_seconds={cpu_seconds:.2} cores_busy={:.2} cpu_ns_per_event={:.0}",
        cpu_seconds / elapsed_s,
        cpu_seconds * 1e9 / events.max(1) as f64
    )
}
