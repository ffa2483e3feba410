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
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// The kernel's USER_HZ, which is 100 on every Linux platform Rust targets.
fn clock_ticks_per_second() -> f64 {
    100.0
}
