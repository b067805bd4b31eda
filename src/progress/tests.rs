use super::bars::Bars;
use super::summary::summary_text;
use super::untrusted::MAX_LINE_CHARS;
use super::*;
use crate::events::Emitter;
use indicatif::ProgressDrawTarget;
use std::path::Path;

fn result(target: &str, outcome: Outcome, phase: Phase, seconds: f64) -> TargetResult {
    TargetResult {
        target: target.to_owned(),
        outcome,
        phase,
        seconds,
        artifacts: Vec::new(),
        log: PathBuf::from(format!("/logs/{target}.log")),
        exit_code: None,
        failure: None,
        error: None,
        context_digest: None,
        log_truncated: None,
    }
}

fn phase(target: &str, phase: Phase, seconds: f64) -> Event {
    Event::Phase {
        target: target.to_owned(),
        phase,
        seconds,
    }
}

fn output(target: &str, line: &str) -> Event {
    Event::Output {
        target: target.to_owned(),
        line: line.to_owned(),
    }
}

/// A small run: `web` succeeds, `db` fails in provision, `doc` is skipped; results arrive in a
/// different order than the targets were announced.
fn script() -> Vec<Event> {
    let mut ok = result("web", Outcome::Succeeded, Phase::Teardown, 12.5);
    ok.artifacts = vec![
        PathBuf::from("out/web.tar"),
        PathBuf::from("out/web.sha256"),
    ];
    let mut bad = result("db", Outcome::Failed, Phase::Provision, 41.0);
    bad.exit_code = Some(2);
    bad.error = Some(
        "db failed in provision: script exited (exit code 2); log: /logs/db.log\n  \
         last lines of the log:\n    E: Unable to locate package nope"
            .to_owned(),
    );
    let mut skipped = result("doc", Outcome::Skipped, Phase::Queued, 0.0);
    skipped.error = Some("not started: an earlier target failed".to_owned());
    vec![
        Event::RunStarted {
            targets: vec!["web".into(), "db".into(), "doc".into()],
            jobs: 2,
        },
        phase("web", Phase::Queued, 0.0),
        phase("db", Phase::Queued, 0.0),
        phase("doc", Phase::Queued, 0.0),
        phase("web", Phase::Boot, 3.2),
        phase("db", Phase::Boot, 3.4),
        phase("db", Phase::Provision, 9.0),
        output("db", "\x1b[31mE: Unable to locate package nope\x1b[0m"),
        phase("web", Phase::Provision, 9.5),
        output("web", "Setting up libc6 ..."),
        Event::Finished(bad),
        Event::Finished(ok),
        Event::Finished(skipped),
        Event::RunFinished {
            succeeded: 1,
            cached: 0,
            failed: 1,
            cancelled: 0,
            skipped: 1,
            seconds: 52.3,
        },
    ]
}

/// Runs `events` through `view`, returning the summary and what the view wrote.
async fn render_all(events: Vec<Event>, view: View) -> (Summary, String) {
    let (emitter, mut rx) = Emitter::channel();
    for event in events {
        emitter.send(event);
    }
    drop(emitter);
    let mut out = Vec::new();
    let summary = render(&mut rx, view, &mut out).await;
    (
        summary,
        String::from_utf8(out).expect("renderers write UTF-8"),
    )
}

#[tokio::test]
async fn json_writes_one_parsable_line_per_event_in_order() {
    let events = script();
    let (_, out) = render_all(events.clone(), View::Json).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), events.len());
    for (line, event) in lines.iter().zip(&events) {
        let parsed: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        let mut expected = serde_json::to_value(event).unwrap();
        expected["schema"] = super::JSON_SCHEMA.into();
        assert_eq!(parsed, expected);
    }
    let tags: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
        .collect();
    assert_eq!(tags[0], "\"run_started\"");
    assert_eq!(tags[1], "\"phase\"");
    assert_eq!(tags[7], "\"output\"");
    assert_eq!(tags[10], "\"finished\"");
    assert_eq!(tags[13], "\"run_finished\"");
    // Guest text is passed on as-is; JSON escaping is what keeps it inert.
    assert!(!out.contains('\x1b'));
    let output: serde_json::Value = serde_json::from_str(lines[7]).unwrap();
    assert_eq!(
        output["line"],
        "\x1b[31mE: Unable to locate package nope\x1b[0m"
    );
}

/// Fails every write, like stdout piped into `head` that has exited.
struct Closed;

impl Write for Closed {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
}

#[tokio::test]
async fn a_closed_output_still_yields_the_whole_summary() {
    let (emitter, mut rx) = Emitter::channel();
    for event in script() {
        emitter.send(event);
    }
    drop(emitter);
    let summary = render(&mut rx, View::Json, &mut Closed).await;
    assert_eq!(summary.results.len(), 3);
    assert_eq!(summary.failed, 1);
}

#[tokio::test]
async fn plain_view_prints_phase_changes_and_finishes_only() {
    let (_, out) = render_all(script(), View::Plain).await;
    let expected = "\
building 3 targets, 2 at a time
[web] boot (3.2s)
[db] boot (3.4s)
[db] provision (9.0s)
[web] provision (9.5s)
[db] failed in provision after 41.0s: script exited (exit code 2); log: /logs/db.log
[web] succeeded in 12.5s (2 artifacts)
[doc] skipped: not started: an earlier target failed
";
    assert_eq!(out, expected);
}

#[tokio::test]
async fn summary_keeps_announced_order_and_counts_results() {
    let (summary, _) = render_all(script(), View::Plain).await;
    let order: Vec<&str> = summary.results.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(order, ["web", "db", "doc"]);
    assert_eq!(
        (
            summary.succeeded,
            summary.failed,
            summary.cancelled,
            summary.skipped
        ),
        (1, 1, 0, 1)
    );
    assert_eq!(summary.seconds, 52.3);
    assert!(!summary.all_succeeded());
}

#[tokio::test]
async fn targets_without_a_result_are_reported_as_failed() {
    let events = vec![
        Event::RunStarted {
            targets: vec!["a".into(), "b".into()],
            jobs: 1,
        },
        phase("a", Phase::Boot, 1.0),
        phase("a", Phase::Sync, 4.0),
        // Never announced, but its result must not be lost.
        Event::Finished(result("stray", Outcome::Succeeded, Phase::Teardown, 2.0)),
    ];
    let (summary, _) = render_all(events, View::Plain).await;
    let order: Vec<&str> = summary.results.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(order, ["a", "b", "stray"]);
    let a = &summary.results[0];
    assert_eq!(
        (a.outcome, a.phase, a.seconds),
        (Outcome::Failed, Phase::Sync, 4.0)
    );
    assert!(a.error.as_deref().unwrap().contains("without a result"));
    assert_eq!(summary.results[1].phase, Phase::Queued);
    assert_eq!((summary.succeeded, summary.failed), (1, 2));
    let text = summary_text(&summary);
    let row_a = text.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(
        row_a.ends_with(" -"),
        "no log path is shown as `-`: {row_a}"
    );
}

#[tokio::test]
async fn live_view_tracks_phase_output_and_finish() {
    let mut events = script();
    events.truncate(10); // up to web's output line; nobody has finished yet
    let mut bars = Bars::new(MultiProgress::with_draw_target(ProgressDrawTarget::hidden()));
    for event in &events {
        bars.show(event);
    }
    let (prefix, message, finished) = bars.state("db").unwrap();
    assert_eq!(prefix, "db  provision");
    assert_eq!(message, "E: Unable to locate package nope");
    assert!(!finished);
    assert_eq!(bars.state("doc").unwrap().0.trim_end(), "doc queued");

    for event in &script()[10..] {
        bars.show(event);
    }
    let (mark, message, finished) = bars.state("db").unwrap();
    assert_eq!(mark, "✗");
    assert_eq!(
        message,
        "db  failed in provision after 41.0s: script exited (exit code 2); log: /logs/db.log"
    );
    assert!(finished);
    assert_eq!(bars.state("web").unwrap().0, "✓");
    assert_eq!(bars.state("doc").unwrap().0, "-");
    bars.close();
}

#[test]
fn sanitize_strips_escapes_and_control_characters() {
    let cases = [
        ("\x1b[1;31merror\x1b[0m: boom", "error: boom"),
        ("\x1b]0;pwned title\x07visible", "visible"),
        ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1bPq#0;2;0;0;0\x1b\\after dcs", "after dcs"),
        ("\x1b(Bcharset", "charset"),
        ("\u{9b}2Jeight-bit csi", "eight-bit csi"),
        ("bell\x07 and\x08 backspace\x7f", "bell and backspace"),
        ("tab\there", "tab here"),
        ("safe\u{202e}txt.exe", "safetxt.exe"),
        ("progress 10%\rprogress 50%\rprogress 100%", "progress 100%"),
        ("done\r\n", "done"),
        ("  indented  ", "  indented"),
        ("unterminated \x1b[31", "unterminated"),
        ("ünïcödé ✓", "ünïcödé ✓"),
    ];
    for (raw, clean) in cases {
        assert_eq!(sanitize(raw), clean, "sanitizing {raw:?}");
    }
    let huge = "x".repeat(100_000);
    assert_eq!(sanitize(&huge).chars().count(), MAX_LINE_CHARS);
}

fn sample_summary(log_dir: &Path) -> Summary {
    let mut ok = result("hello-bookworm", Outcome::Succeeded, Phase::Teardown, 41.0);
    ok.artifacts = vec![PathBuf::from("a"), PathBuf::from("b"), PathBuf::from("c")];
    let mut bad = result("db", Outcome::Failed, Phase::Provision, 125.4);
    bad.log = log_dir.join("db.log");
    bad.exit_code = Some(100);
    bad.error = Some(format!(
        "db failed in provision: script exited (exit code 100); log: {}",
        bad.log.display()
    ));
    let cancelled = result("c", Outcome::Cancelled, Phase::Boot, 2.0);
    Summary {
        results: vec![ok, bad, cancelled],
        succeeded: 1,
        cached: 0,
        failed: 1,
        cancelled: 1,
        skipped: 0,
        seconds: 130.0,
    }
}

#[test]
fn summary_table_lists_every_target_in_aligned_columns() {
    let dir = tempfile::tempdir().unwrap();
    let summary = sample_summary(dir.path());
    let text = summary_text(&summary);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        text.lines().next(),
        Some(""),
        "set apart from the progress above"
    );
    let header = lines[0];
    assert!(header.starts_with("TARGET"), "{text}");
    let col = |name: &str| header.find(name).unwrap();
    let (result_at, log_at) = (col("RESULT"), col("LOG"));
    let duration_end = col("DURATION") + "DURATION".len();
    let artifacts_end = col("ARTIFACTS") + "ARTIFACTS".len();
    for (row, r) in lines[1..4].iter().zip(&summary.results) {
        assert!(row.starts_with(&r.target), "{row}");
        assert_eq!(
            &row[result_at..result_at + r.outcome.as_str().len()],
            r.outcome.as_str()
        );
        assert_eq!(&row[log_at..], r.log.display().to_string());
        assert_eq!(
            &row[artifacts_end - 1..artifacts_end],
            r.artifacts.len().to_string()
        );
        assert_eq!(
            &row[duration_end - 1..duration_end],
            "s",
            "right-aligned: {row}"
        );
    }
    assert!(lines[1].contains(" 41.0s "), "{text}");
    assert!(lines[2].contains(" 2m05s "), "{text}");
    assert!(text.ends_with("\n1 succeeded, 0 cached, 1 failed, 1 cancelled, 0 skipped in 2m10s\n"));
}

#[test]
fn summary_details_failures_with_the_error_and_the_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let summary = sample_summary(dir.path());
    let log: String = (1..=30).map(|i| format!("log line {i}\n")).collect();
    std::fs::write(
        dir.path().join("db.log"),
        format!("{log}\x1b[31mE: nope\x1b[0m\n"),
    )
    .unwrap();

    let text = summary_text(&summary);
    assert!(
        text.contains(summary.results[1].error.as_deref().unwrap()),
        "verbatim: {text}"
    );
    assert!(text.contains("    log line 30\n    E: nope\n"), "{text}");
    assert!(
        !text.contains("log line 21\n"),
        "only the last lines: {text}"
    );
    assert!(!text.contains('\x1b'));
    // Only failures get details: the cancelled target has no log file to show anyway.
    assert_eq!(text.matches("last lines of").count(), 1);

    let mut written = Vec::new();
    print_summary(&summary, &mut written);
    assert_eq!(String::from_utf8(written).unwrap(), text);
}

#[test]
fn summary_does_not_repeat_a_log_tail_the_error_already_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let mut summary = sample_summary(dir.path());
    std::fs::write(dir.path().join("db.log"), "apt-get install\nE: nope\n").unwrap();
    summary.results[1].error =
        Some("db failed in provision: exit 100\n  last lines of the log:\n    E: nope".into());
    let text = summary_text(&summary);
    assert_eq!(text.matches("E: nope").count(), 1, "{text}");
}

#[test]
fn durations_read_at_a_glance() {
    assert_eq!(fmt_seconds(3.24), "3.2s");
    assert_eq!(fmt_seconds(59.9), "59.9s");
    assert_eq!(fmt_seconds(59.97), "1m00s");
    assert_eq!(fmt_seconds(125.4), "2m05s");
    assert_eq!(fmt_seconds(7260.0), "2h01m");
    assert_eq!(fmt_seconds(-1.0), "0.0s");
    assert_eq!(fmt_seconds(f64::NAN), "0.0s");
}
