//! Every PromQL expression in the Grafana dashboards and the alert rules, evaluated by a real
//! Prometheus server (Debian's `prometheus`) against a live scrape of the demo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, unique};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `(where, expression)` for every panel target of every dashboard.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = repo().join("grafana/dashboards");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut panels: Vec<serde_json::Value> = doc["panels"].as_array().cloned().unwrap_or_default();
        // Rows may nest their panels.
        let nested: Vec<serde_json::Value> =
            panels.iter().flat_map(|p| p["panels"].as_array().cloned().unwrap_or_default()).collect();
        panels.extend(nested);
        for p in panels {
            for t in p["targets"].as_array().cloned().unwrap_or_default() {
                if let Some(expr) = t["expr"].as_str() {
                    let title = p["title"].as_str().unwrap_or("?");
                    out.push((
                        format!("{} / {title}", path.file_name().unwrap().to_string_lossy()),
                        expr.to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// `(alert, expression)` for every rule in prometheus/alerts.yml (`expr:` on one line or as a
/// `|`/`>` block).
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("prometheus/alerts.yml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut name = String::from("?");
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_start();
        if let Some(n) = l.strip_prefix("- alert:").or_else(|| l.strip_prefix("alert:")) {
            name = n.trim().to_string();
        }
        if let Some(rest) = l.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" || rest == "|-" || rest == ">-" {
                let indent = lines[i].len() - l.len();
                let mut expr = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let ni = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && ni <= indent {
                        break;
                    }
                    expr.push_str(next.trim());
                    expr.push(' ');
                    i += 1;
                }
                out.push((name.clone(), expr.trim().to_string()));
            } else {
                out.push((name.clone(), rest.trim_matches(|c| c == '\'' || c == '"').to_string()));
            }
        }
        i += 1;
    }
    out
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Evaluates `expr` at Prometheus's current time: `Err` with Prometheus's message if it does not
/// parse, otherwise the number of series returned.
fn query(port: u16, expr: &str) -> Result<usize, String> {
    let body = http_get(port, &format!("/api/v1/query?query={}", encode(expr)))
        .ok_or_else(|| "query refused (HTTP status other than 200)".to_string())?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(v["error"].to_string());
    }
    Ok(match &v["data"]["result"] {
        serde_json::Value::Array(a) => a.len(),
        serde_json::Value::Null => 0,
        _ => 1, // scalar or string
    })
}

#[test]
#[ignore = "needs Debian's prometheus and ClickHouse: scripts/services.sh start (FERROFLOW_CLICKHOUSE_URL)"]
fn every_dashboard_and_alert_expression_evaluates_against_a_live_scrape() {
    let dashboards = dashboard_exprs();
    let alerts = alert_exprs();
    assert!(dashboards.len() >= 10, "dashboards hold panel queries: {dashboards:?}");
    assert!(alerts.len() >= 7, "alert rules found: {alerts:?}");

    let dir = std::env::temp_dir().join(unique("ferroflow-obs"));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics_port = free_port();
    let ch = std::env::var("FERROFLOW_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let mut demo = Command::new(env!("CARGO_BIN_EXE_ferroflow-pipeline"))
        .args(["demo", "--events", "20000", "--linger-secs", "120"])
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--clickhouse-url")
        .arg(&ch)
        .arg("--dir")
        .arg(dir.join("demo"))
        .stdout(Stdio::from(std::fs::File::create(dir.join("demo.log")).unwrap()))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let prom_port = free_port();
    let out = Command::new("bash")
        .arg(repo().join("scripts/prometheus-instance.sh"))
        .arg(dir.join("prometheus"))
        .arg(prom_port.to_string())
        .arg(format!("127.0.0.1:{metrics_port}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "prometheus did not start: {}", String::from_utf8_lossy(&out.stderr));
    let prom_pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(&self.0).status();
        }
    }
    let _prom = Kill(prom_pid);

    // Wait until the demo has finished its run (its counters are final) and Prometheus has
    // scraped it enough times for rate() windows.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = std::fs::read_to_string(dir.join("demo.log")).unwrap_or_default();
        let scraped = query(prom_port, "count_over_time(ferroflow_records_in_total[2m]) >= 8").unwrap_or(0);
        if log.contains("serving /metrics for") && scraped > 0 {
            break;
        }
        assert!(demo.try_wait().unwrap().is_none(), "the demo exited early:\n{log}");
        assert!(Instant::now() < deadline, "no live scrape within 90 s:\n{log}");
        std::thread::sleep(Duration::from_millis(500));
    }

    let mut failures = Vec::new();
    for (at, expr) in &dashboards {
        match query(prom_port, expr) {
            Ok(0) => failures.push(format!("{at}: `{expr}` returned no data")),
            Ok(_) => {}
            Err(e) => failures.push(format!("{at}: `{expr}` failed: {e}")),
        }
    }
    for (alert, expr) in &alerts {
        if let Err(e) = query(prom_port, expr) {
            failures.push(format!("alert {alert}: `{expr}` failed: {e}"));
        }
    }
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(
        failures.is_empty(),
        "{} of {} expressions failed:\n{}",
        failures.len(),
        dashboards.len() + alerts.len(),
        failures.join("\n")
    );
}
