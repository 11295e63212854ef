//! The PASS / FAIL / SKIP table the harness prints, and its exit code.
//!
//! ```
//! use nomq_harness::report::Report;
//!
//! let mut report = Report::new("example");
//! report.check("adds up", || if 1 + 1 == 2 { Ok("2".into()) } else { Err("math".into()) });
//! report.skip("needs root", "not permitted here");
//! let text = report.render();
//! assert!(text.contains("PASS  adds up"));
//! assert!(text.ends_with("1 passed, 0 failed, 1 skipped\n"));
//! assert_eq!(report.exit_code(), 0);
//! ```
//!
//! A report can also stream ([`Report::stream`]): it prints its title and header at once,
//! then each row the moment it is added (flushed), so a long run shows progress; at the end
//! only the summary line is left to print ([`Report::print_end`]). The streamed table has a
//! fixed name column ([`STREAM_NAME_WIDTH`]), as the names to come are not known yet.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::time::{Duration, Instant};

/// How one scenario ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and its checks held.
    Pass,
    /// It ran and a check failed.
    Fail,
    /// It could not run here (and says why).
    Skip,
}

impl Outcome {
    /// `PASS`, `FAIL` or `SKIP`.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width and alignment flags apply, as in the table's first column.
        f.pad(self.label())
    }
}

/// Where a streaming report prints its rows as they finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// Standard output (the table mode).
    Stdout,
    /// Standard error (the `--json` mode, whose standard output is the one JSON object).
    Stderr,
}

/// Width of the name column of a streamed table (the longest row name of the harness,
/// `std device: host refuses a replayed device datagram`, fits).
pub const STREAM_NAME_WIDTH: usize = 52;
/// Width of the time column of a streamed table (`60.000 s` fits).
const STREAM_TIME_WIDTH: usize = 9;

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Scenario name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What it measured (pass), what went wrong (fail) or why it did not run (skip).
    pub detail: String,
    /// How long it took; `None` for a skip.
    pub duration: Option<Duration>,
}

/// A titled list of scenario results.
#[derive(Clone, Debug)]
pub struct Report {
    title: String,
    rows: Vec<Row>,
    lap: Instant,
    live: Option<Live>,
}

impl Report {
    /// An empty report. Its lap clock (see [`Report::record`]) starts now.
    #[must_use]
    pub fn new(title: impl Into<String>) -> Self {
        Self { title: title.into(), rows: Vec::new(), lap: Instant::now(), live: None }
    }

    /// Streams the report to `to` from now on: prints the title and the header now, then
    /// every row as it is added, flushing after each. Rows added before are printed now.
    pub fn stream(&mut self, to: Live) {
        self.live = Some(to);
        let mut text = self.live_header();
        for row in &self.rows {
            text.push_str(&live_row(row));
        }
        emit(to, &text);
    }

    /// Where the report streams, if it does.
    #[must_use]
    pub fn live(&self) -> Option<Live> {
        self.live
    }

    /// The title and header lines of the streamed table.
    #[must_use]
    pub fn live_header(&self) -> String {
        format!("== {} ==\n{}\n", self.title, header_line(STREAM_NAME_WIDTH, STREAM_TIME_WIDTH))
    }

    /// Records a result: `Ok(detail)` passes, `Err(reason)` fails. Its duration is the time
    /// since the previous row was added (or since [`Report::new`]); use [`Report::check`] or
    /// [`Report::record_timed`] to time a scenario exactly.
    pub fn record(&mut self, name: impl Into<String>, result: Result<String, String>) {
        let elapsed = self.lap.elapsed();
        self.record_timed(name, elapsed, result);
    }

    /// Records a result with a duration measured by the caller.
    pub fn record_timed(
        &mut self,
        name: impl Into<String>,
        duration: Duration,
        result: Result<String, String>,
    ) {
        let (outcome, detail) = match result {
            Ok(detail) => (Outcome::Pass, detail),
            Err(reason) => (Outcome::Fail, reason),
        };
        self.push(Row { name: name.into(), outcome, detail, duration: Some(duration) });
    }

    /// Runs `scenario`, times it, and records its result.
    pub fn check(
        &mut self,
        name: impl Into<String>,
        scenario: impl FnOnce() -> Result<String, String>,
    ) {
        let started = Instant::now();
        let result = scenario();
        self.record_timed(name, started.elapsed(), result);
    }

    /// Records a scenario that did not run, and why.
    pub fn skip(&mut self, name: impl Into<String>, why: impl Into<String>) {
        self.push(Row {
            name: name.into(),
            outcome: Outcome::Skip,
            detail: why.into(),
            duration: None,
        });
    }

    /// Adds a finished row as it is (from another report, say).
    pub fn push(&mut self, row: Row) {
        if let Some(to) = self.live {
            emit(to, &live_row(&row));
        }
        self.rows.push(row);
        self.lap = Instant::now();
    }

    /// The report's title.
    #[must_use]
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The rows so far, in the order they were added.
    #[must_use]
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// How many rows have `outcome`.
    #[must_use]
    pub fn count(&self, outcome: Outcome) -> usize {
        self.rows.iter().filter(|r| r.outcome == outcome).count()
    }

    /// 0 when nothing failed, 1 when anything did. Skips do not fail a run.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        i32::from(self.count(Outcome::Fail) > 0)
    }

    /// The summary line: `N passed, M failed`, plus `, K skipped` when anything was skipped.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut line =
            format!("{} passed, {} failed", self.count(Outcome::Pass), self.count(Outcome::Fail));
        let skipped = self.count(Outcome::Skip);
        if skipped > 0 {
            let _ = write!(line, ", {skipped} skipped");
        }
        line
    }

    /// The table as text: a title line, a header, one aligned row per result, and the summary
    /// alone on the last line.
    #[must_use]
    pub fn render(&self) -> String {
        let durations: Vec<String> =
            self.rows.iter().map(|r| format_duration(r.duration)).collect();
        let name_w = self.rows.iter().map(|r| r.name.chars().count()).max().unwrap_or(0).max(8);
        let time_w = durations.iter().map(|d| d.len()).max().unwrap_or(0).max(4);
        let mut out = String::new();
        // `write!` into a String cannot fail.
        let _ = writeln!(out, "== {} ==", self.title);
        let _ = writeln!(out, "{}", header_line(name_w, time_w));
        for (row, time) in self.rows.iter().zip(&durations) {
            let _ = writeln!(out, "{}", row_line(row, time, name_w, time_w));
        }
        let _ = writeln!(out, "{}", self.summary());
        out
    }

    /// Writes [`Report::render`] to `out`.
    ///
    /// # Errors
    ///
    /// Any error from `out`.
    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        out.write_all(self.render().as_bytes())
    }

    /// Prints the table to standard output.
    pub fn print(&self) {
        print!("{}", self.render());
    }

    /// What is left to print at the end of a run: the whole table for a report that did
    /// not stream, only the summary line for one that did (its rows are out already).
    #[must_use]
    pub fn end_text(&self) -> String {
        if self.live.is_some() { format!("{}\n", self.summary()) } else { self.render() }
    }

    /// Prints [`Report::end_text`] where the report streams (standard output if it does
    /// not), and flushes.
    pub fn print_end(&self) {
        emit(self.live.unwrap_or(Live::Stdout), &self.end_text());
    }

    /// The report as one JSON object: `title`, `passed`, `failed`, `skipped` and `results`
    /// (each with `name`, `outcome`, `detail` and `duration_ms`, null for a skip).
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "{{\"title\":{},\"passed\":{},\"failed\":{},\"skipped\":{},\"results\":[",
            json_string(&self.title),
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip)
        );
        for (k, row) in self.rows.iter().enumerate() {
            let duration = match row.duration {
                Some(d) => format!("{:.3}", d.as_secs_f64() * 1000.0),
                None => "null".into(),
            };
            let _ = write!(
                out,
                "{}{{\"name\":{},\"outcome\":\"{}\",\"detail\":{},\"duration_ms\":{duration}}}",
                if k == 0 { "" } else { "," },
                json_string(&row.name),
                row.outcome,
                json_string(&row.detail)
            );
        }
        out.push_str("]}");
        out
    }
}

fn header_line(name_w: usize, time_w: usize) -> String {
    format!("{:<6}{:<name_w$}  {:>time_w$}  DETAIL", "", "SCENARIO", "TIME")
}

fn row_line(row: &Row, time: &str, name_w: usize, time_w: usize) -> String {
    let detail = one_line(&row.detail);
    let line = format!("{:<6}{:<name_w$}  {:>time_w$}  {detail}", row.outcome, row.name, time);
    line.trim_end().to_string()
}

/// One row of a streamed table, with its line break.
fn live_row(row: &Row) -> String {
    let time = format_duration(row.duration);
    format!("{}\n", row_line(row, &time, STREAM_NAME_WIDTH, STREAM_TIME_WIDTH))
}

/// Writes `text` to `to` and flushes; a closed pipe is not the run's failure, so write
/// errors are ignored.
fn emit(to: Live, text: &str) {
    match to {
        Live::Stdout => {
            let mut out = io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        Live::Stderr => {
            let mut out = io::stderr().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
}

/// `1.234 s`, `56 ms`, `789 µs`, or `-` for none.
fn format_duration(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d >= Duration::from_secs(1) => format!("{:.3} s", d.as_secs_f64()),
        Some(d) if d >= Duration::from_millis(1) => format!("{} ms", d.as_millis()),
        Some(d) => format!("{} µs", d.as_micros()),
    }
}

/// Keeps a detail on its row: line breaks become ` / `.
fn one_line(s: &str) -> String {
    s.trim().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" / ")
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("sample");
        r.record_timed("short", Duration::from_millis(12), Ok("fine".into()));
        r.record_timed(
            "a much longer name",
            Duration::from_micros(1_500_000),
            Err("broke\nbadly".into()),
        );
        r.skip("skipped one", "no root");
        r
    }

    #[test]
    fn renders_aligned_rows_and_summary() {
        let text = sample().render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "== sample ==");
        assert_eq!(lines[1], "      SCENARIO               TIME  DETAIL");
        assert_eq!(lines[2], "PASS  short                 12 ms  fine");
        assert_eq!(lines[3], "FAIL  a much longer name  1.500 s  broke / badly");
        assert_eq!(lines[4], "SKIP  skipped one               -  no root");
        assert_eq!(lines[5], "1 passed, 1 failed, 1 skipped");
        assert_eq!(lines.len(), 6);
        // The detail column starts at the same offset on every row.
        let col = lines[1].find("DETAIL").unwrap();
        assert_eq!(&lines[2][col..], "fine");
        assert_eq!(&lines[4][col..], "no root");
    }

    #[test]
    fn exit_code_fails_only_on_failures() {
        let mut r = Report::new("t");
        assert_eq!(r.exit_code(), 0);
        r.record("ok", Ok(String::new()));
        r.skip("s", "why");
        assert_eq!(r.exit_code(), 0);
        assert_eq!(r.summary(), "1 passed, 0 failed, 1 skipped");
        r.check("bad", || Err("no".into()));
        assert_eq!(r.exit_code(), 1);
        assert_eq!(r.count(Outcome::Fail), 1);
        let mut plain = Report::new("t");
        plain.record("ok", Ok(String::new()));
        assert_eq!(plain.summary(), "1 passed, 0 failed");
    }

    #[test]
    fn record_uses_lap_time_and_check_times_the_closure() {
        let mut r = Report::new("t");
        r.check("sleepy", || {
            std::thread::sleep(Duration::from_millis(20));
            Ok("slept".into())
        });
        r.record("right after", Ok(String::new()));
        let rows = r.rows();
        assert!(rows[0].duration.unwrap() >= Duration::from_millis(20));
        assert!(rows[1].duration.unwrap() < Duration::from_millis(20));
    }

    #[test]
    fn json_escapes_and_counts() {
        let json = sample().to_json();
        assert!(json.starts_with(
            "{\"title\":\"sample\",\"passed\":1,\"failed\":1,\"skipped\":1,\"results\":["
        ));
        assert!(json.contains("\"detail\":\"broke\\nbadly\""));
        assert!(json.contains("\"duration_ms\":1500.000"));
        assert!(json.contains("\"outcome\":\"SKIP\",\"detail\":\"no root\",\"duration_ms\":null"));
        assert_eq!(json_string("q\"\\\u{1}"), "\"q\\\"\\\\\\u0001\"");
    }

    #[test]
    fn streamed_rows_align_with_the_streamed_header_and_end_with_the_summary() {
        let mut r = sample();
        assert!(r.live().is_none());
        assert_eq!(r.end_text(), r.render());
        let header = r.live_header();
        let lines: Vec<&str> = header.lines().collect();
        assert_eq!(lines[0], "== sample ==");
        let col = lines[1].find("DETAIL").unwrap();
        for row in r.rows() {
            let line = live_row(row);
            assert!(line.ends_with('\n'));
            assert_eq!(&line[col..].trim_end()[..2], &one_line(&row.detail)[..2], "{line}");
        }
        r.stream(Live::Stderr);
        assert_eq!(r.live(), Some(Live::Stderr));
        assert_eq!(r.end_text(), "1 passed, 1 failed, 1 skipped\n");
        // Rows added while streaming still make the same JSON and counts.
        r.record("later", Ok("fine".into()));
        assert_eq!(r.count(Outcome::Pass), 2);
        assert!(r.to_json().contains("\"name\":\"later\""));
    }

    #[test]
    fn write_to_matches_render() {
        let r = sample();
        let mut buf = Vec::new();
        r.write_to(&mut buf).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), r.render());
    }
}
