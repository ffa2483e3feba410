//! Kill-9 runs: a test binary runs its job as a child process (itself, run again with the test's
//! name), which the parent kills with SIGKILL at seeded random moments and restarts from its last
//! checkpoint, then compares what the runs wrote with an uninterrupted run's.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The environment variable that tells a child process the directory its job runs in.
pub const CHILD_DIR: &str = "FERROFLOW_CRASH_DIR";
/// The environment variable that tells a child process to sleep this many µs per record, so
/// that kills land mid-run.
pub const CHILD_PACE: &str = "FERROFLOW_CRASH_PACE_US";

/// In a child process: its directory and pace. `None` in the parent.
pub fn child() -> Option<(PathBuf, u64)> {
    let dir = std::env::var(CHILD_DIR).ok()?;
    let pace = std::env::var(CHILD_PACE).ok().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((PathBuf::from(dir), pace))
}

/// Runs the test `test` of this binary as a child whose job works in `dir`.
pub fn spawn(test: &str, dir: &Path, pace_us: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_PACE, pace_us.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (up to 60 s) until `dir` holds a checkpoint's manifest (a `.json` file, written last;
/// not a writer's claim under `writers/`, which a run writes before its first checkpoint).
pub fn wait_for_checkpoint(dir: &Path) {
    fn any_manifest(dir: &Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let path = e.path();
                let claims = path.file_name().is_some_and(|n| n == "writers");
                path.extension().is_some_and(|x| x == "json")
                    || (path.is_dir() && !claims && any_manifest(&path))
            })
        })
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !any_manifest(dir) {
        assert!(Instant::now() < deadline, "no checkpoint within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (up to 120 s) for `child` to end, and fails unless it succeeded.
pub fn finish(mut child: Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the job failed");
            return;
        }
        assert!(Instant::now() < deadline, "the job did not finish in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `root/name`, created.
pub fn run_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `test`'s job in `dir` up to six times, each killed with SIGKILL after a random 200–700 ms
/// (the first only after a checkpoint exists), then once to its end. Kill moments come from the
/// seed `CRASH_SEED=<n>` replays (printed). Returns the seed and the number of kills that landed
/// while the job ran (at least four, or the test fails).
pub fn kill_and_restart(test: &str, dir: &Path, pace_us: u64) -> (u64, u32) {
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("crash test seed: CRASH_SEED={seed}");
    let mut rng = seed | 1;
    let mut kills = 0;
    for round in 0..6 {
        let mut child = spawn(test, dir, pace_us);
        if round == 0 {
            // However slow the machine, the first kill comes after a checkpoint: the last run
            // must have one to start from.
            wait_for_checkpoint(&dir.join("checkpoints"));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(200 + rng % 500));
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "round {round}: the job failed (CRASH_SEED={seed})");
            break; // it finished before the kill
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 4, "only {kills} kills landed while the job was running (CRASH_SEED={seed})");
    // A run that ended before its kill noted its restore too: only the last run's counts.
    let _ = std::fs::remove_file(dir.join("restores"));
    finish(spawn(test, dir, 0));
    (seed, kills)
}

/// Notes in `dir` that a run started from a checkpoint (the parent counts them with
/// [`restores`]).
pub fn note_restore(dir: &Path) {
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("restores")).unwrap();
    writeln!(log, "restored").unwrap();
}

/// How many runs in `dir` noted that they started from a checkpoint.
pub fn restores(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("restores")).unwrap_or_default().lines().count()
}
