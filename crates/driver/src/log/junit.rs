//! JUnit XML: one test case per subtest, plus `main` for everything outside subtests.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::time::{Duration, Instant};

struct Case {
    name: String,
    /// Time spent in this case, excluding nested subtests.
    elapsed: Duration,
    /// When the case was last resumed (entered, or a nested subtest ended).
    resumed: Option<Instant>,
    failure: Option<String>,
    out: String,
}

impl Case {
    fn new(name: &str) -> Self {
        Case {
            name: name.to_string(),
            elapsed: Duration::ZERO,
            resumed: None,
            failure: None,
            out: String::new(),
        }
    }
}

/// Collects test cases while the test runs.
pub(crate) struct Junit {
    cases: Vec<Case>,
    stack: Vec<usize>,
}

impl Junit {
    pub(crate) fn new(now: Instant) -> Self {
        let mut main = Case::new("main");
        main.resumed = Some(now);
        Junit {
            cases: vec![main],
            stack: vec![0],
        }
    }

    fn current(&mut self) -> &mut Case {
        let i = *self.stack.last().unwrap_or(&0);
        &mut self.cases[i]
    }

    fn pause_current(&mut self, now: Instant) {
        let c = self.current();
        if let Some(r) = c.resumed.take() {
            c.elapsed += now.saturating_duration_since(r);
        }
    }

    pub(crate) fn begin(&mut self, name: &str, now: Instant) {
        self.pause_current(now);
        let mut case = Case::new(name);
        case.resumed = Some(now);
        self.cases.push(case);
        self.stack.push(self.cases.len() - 1);
    }

    pub(crate) fn end(&mut self, failure: Option<String>, now: Instant) {
        if self.stack.len() <= 1 {
            return;
        }
        self.pause_current(now);
        if let Some(f) = failure {
            self.current().failure.get_or_insert(f);
        }
        self.stack.pop();
        self.current().resumed = Some(now);
    }

    /// Appends a log line to the current case's system-out.
    pub(crate) fn line(&mut self, text: &str) {
        let c = self.current();
        c.out.push_str(text);
        c.out.push('\n');
    }

    /// Marks the current case failed (the test failed outside any subtest or the subtest failure is
    /// not otherwise recorded).
    pub(crate) fn fail_current(&mut self, message: &str) {
        self.current()
            .failure
            .get_or_insert_with(|| message.to_string());
    }

    pub(crate) fn report(&mut self, suite: &str, now: Instant, redact_times: bool) -> Report {
        // Close what is still open (a failure unwinding through subtests).
        while self.stack.len() > 1 {
            self.end(None, now);
        }
        self.pause_current(now);
        self.cases[0].resumed = Some(now);
        let mut ts = TestSuite::new(suite);
        let mut total = Duration::ZERO;
        for c in &self.cases {
            let status = match &c.failure {
                None => TestCaseStatus::success(),
                Some(msg) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(strip_control(msg));
                    s
                }
            };
            let mut tc = TestCase::new(c.name.as_str(), status);
            tc.set_classname(suite);
            let t = if redact_times {
                Duration::ZERO
            } else {
                c.elapsed
            };
            total += t;
            tc.set_time(t);
            if !c.out.is_empty() {
                tc.set_system_out(strip_control(&c.out));
            }
            ts.add_test_case(tc);
        }
        ts.set_time(total);
        let mut report = Report::new(suite);
        report.set_time(total);
        report.add_test_suite(ts);
        report
    }
}

/// Removes control characters (except newline and tab), as the NixOS XML logger does.
pub(crate) fn strip_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Drop a whole ANSI CSI sequence, not just the ESC.
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        if c.is_control() && c != '\n' && c != '\t' {
            continue;
        }
        out.push(c);
    }
    out
}
