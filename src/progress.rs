//! Renders a build's progress events: `plain` for CI logs, `tty` for a live terminal, `json`
//! for tools. No output is ever cut: every log chunk is printed whole, split into lines.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write};
use std::time::{Duration, Instant};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use hoist_solver::progress::{Event, ProgressSink, ResourceUsage, StepNumbers, Stream, json};

/// `--progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// `tty` on a terminal, else `plain`.
    Auto,
    Tty,
    Plain,
    Json,
    /// Nothing (`-q`): the image ID alone goes to stdout, and an error to stderr.
    Quiet,
}

impl Mode {
    pub(crate) fn resolve(self) -> Self {
        match self {
            Self::Auto if std::io::stderr().is_terminal() => Self::Tty,
            Self::Auto => Self::Plain,
            other => other,
        }
    }
}

/// Per-vertex state a renderer keeps.
#[derive(Debug)]
struct Step {
    number: usize,
    name: String,
    started: Instant,
    /// Bytes of an unfinished last line, per stream.
    partial: BTreeMap<StreamKey, Vec<u8>>,
    done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum StreamKey {
    Out,
    Err,
}

impl From<Stream> for StreamKey {
    fn from(s: Stream) -> Self {
        match s {
            Stream::Stdout => Self::Out,
            Stream::Stderr => Self::Err,
        }
    }
}

/// The most output the display queue holds before it leaves chunks out (they are in the
/// build's log, which `hoist logs` prints whole).
const DISPLAY_BUDGET: usize = 8 << 20;

/// Events on their way to the renderer. A build never waits for the display: when the
/// renderer falls behind a step that prints fast, output beyond [`DISPLAY_BUDGET`] is left out
/// of the display, and a line says how much and where to read it. Every other event is kept.
#[derive(Debug, Default)]
pub(crate) struct DisplayQueue {
    state: Mutex<QueueState>,
    ready: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    events: VecDeque<Event>,
    log_bytes: usize,
    /// Bytes left out, by step id, not yet reported.
    skipped: HashMap<usize, u64>,
    build: String,
    numbers: StepNumbers,
    closed: bool,
    /// The command that prints a build's log: `hoist logs`, or with `--remote ADDR`.
    logs_command: Option<String>,
    /// Every step shown, in order, for `--metadata-file`.
    steps: Vec<StepReport>,
}

/// A step as `--metadata-file` lists it (`hoist.steps`): whether it was cached, and if not,
/// why it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StepReport {
    /// Its number in the progress output (`#3`).
    pub(crate) step: usize,
    pub(crate) name: String,
    /// Its Dockerfile line.
    pub(crate) line: Option<usize>,
    pub(crate) cached: bool,
    pub(crate) reason: Option<String>,
}

impl StepReport {
    /// `{"step": 3, "name": …, "line": 4, "cached": false, "reason": …}`, without the line
    /// or reason a step does not have.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::json!({
            "step": self.step,
            "name": self.name,
            "cached": self.cached,
        });
        if let Some(line) = self.line {
            object["line"] = line.into();
        }
        if let Some(reason) = &self.reason {
            object["reason"] = reason.as_str().into();
        }
        object
    }
}

impl QueueState {
    fn logs_command(&self) -> &str {
        self.logs_command.as_deref().unwrap_or("hoist logs")
    }

    fn push(&mut self, event: Event) {
        if let Event::Log { data, .. } = &event {
            self.log_bytes += data.len();
        }
        self.events.push_back(event);
    }

    /// Reports what was left out of step `id`, before its next event.
    fn report_skipped(&mut self, id: usize, number: Option<usize>) {
        if let Some(bytes) = self.skipped.remove(&id) {
            let note = format!(
                "[{bytes} bytes of output are not shown here: the display fell behind; \
                 `{} {} {}` prints all of it]\n",
                self.logs_command(),
                self.build,
                number.unwrap_or(0)
            );
            self.push(Event::Log {
                id,
                stream: Stream::Stderr,
                data: note.into_bytes(),
            });
        }
    }
}

impl DisplayQueue {
    /// A queue whose notes name `command` (such as `hoist logs --remote ADDR`) as the way to
    /// read a build's whole log.
    pub(crate) fn with_logs_command(command: String) -> Self {
        let queue = Self::default();
        queue.lock().logs_command = Some(command);
        queue
    }

    /// The steps shown so far, in the order they were first shown.
    pub(crate) fn steps(&self) -> Vec<StepReport> {
        self.lock().steps.clone()
    }

    /// No more events will come: the renderer ends once it has drawn what is queued.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn next(&self) -> Option<Event> {
        loop {
            {
                let mut state = self.lock();
                if let Some(event) = state.events.pop_front() {
                    if let Event::Log { data, .. } = &event {
                        state.log_bytes -= data.len();
                    }
                    return Some(event);
                }
                if state.closed {
                    return None;
                }
            }
            // A push between the check and this wait leaves a permit, so none is missed.
            self.ready.notified().await;
        }
    }
}

impl ProgressSink for DisplayQueue {
    fn event(&self, event: Event) {
        let mut state = self.lock();
        let number = state.numbers.of(&event);
        let report = match &event {
            Event::Started {
                name, line, reason, ..
            } => Some((name, line, false, reason.clone())),
            Event::Cached { name, line, .. } => Some((name, line, true, None)),
            _ => None,
        };
        if let (Some((name, line, cached, reason)), Some(step)) = (report, number) {
            let report = StepReport {
                step,
                name: name.clone(),
                line: *line,
                cached,
                reason,
            };
            state.steps.push(report);
        }
        match (&event, event.id()) {
            (Event::Build { build }, _) => build.clone_into(&mut state.build),
            (Event::Log { data, .. }, Some(id))
                if state.log_bytes + data.len() > DISPLAY_BUDGET =>
            {
                *state.skipped.entry(id).or_default() += data.len() as u64;
                return;
            }
            (_, Some(id)) => state.report_skipped(id, number),
            (_, None) => {}
        }
        state.push(event);
        drop(state);
        self.ready.notify_one();
    }
}

/// Consumes events until the queue closes, writing them to stderr (progress goes to stderr,
/// as with `docker build`, so stdout stays free for the image id).
pub(crate) async fn render(mode: Mode, events: Arc<DisplayQueue>) {
    if mode == Mode::Quiet {
        // The events are drained so that the queue never holds them; the log is kept in the
        // state root as ever (`hoist logs`).
        while events.next().await.is_some() {}
        return;
    }
    let mut renderer = Renderer::new(mode.resolve(), Box::new(std::io::stderr()));
    renderer.logs_command = events.lock().logs_command().to_owned();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => renderer.event(&event),
                None => break,
            },
            _ = tick.tick(), if renderer.mode == Mode::Tty => renderer.redraw(),
        }
    }
    renderer.finish();
}

struct Renderer {
    mode: Mode,
    out: Box<dyn Write + Send>,
    steps: BTreeMap<usize, Step>,
    numbers: StepNumbers,
    /// Lines of the live area drawn last time (tty), to be erased before the next draw.
    drawn: usize,
    start: Instant,
    /// The command that prints a build's log (see [`DisplayQueue::with_logs_command`]).
    logs_command: String,
}

impl Renderer {
    fn new(mode: Mode, out: Box<dyn Write + Send>) -> Self {
        Self {
            mode,
            out,
            steps: BTreeMap::new(),
            numbers: StepNumbers::default(),
            drawn: 0,
            start: Instant::now(),
            logs_command: "hoist logs".to_owned(),
        }
    }

    /// The step of `event`, shown first now when the event is its first showing.
    fn step(&mut self, event: &Event, id: usize, name: &str) -> &mut Step {
        let n = self.numbers.of(event).unwrap_or(0);
        self.steps.entry(id).or_insert_with(|| Step {
            number: n,
            name: name.to_owned(),
            started: Instant::now(),
            partial: BTreeMap::new(),
            done: false,
        })
    }

    fn event(&mut self, event: &Event) {
        if self.mode == Mode::Json {
            if let Ok(line) = json::encode_line(event) {
                let _ = self.out.write_all(line.as_bytes());
            }
            return;
        }
        self.erase();
        match event {
            Event::Build { build } => {
                let line = format!(
                    "#0 build {build} (its complete log: {} {build})",
                    self.logs_command
                );
                self.line(&line);
            }
            Event::Started {
                id, name, reason, ..
            } => {
                let n = self.step(event, *id, name).number;
                self.line(&format!("#{n} {name}"));
                if let Some(reason) = reason {
                    self.line(&format!("#{n} miss: {reason}"));
                }
            }
            Event::Cached { id, name, .. } => {
                let step = self.step(event, *id, name);
                step.done = true;
                let n = step.number;
                self.line(&format!("#{n} {name}"));
                self.line(&format!("#{n} CACHED"));
            }
            Event::Log { id, stream, data } => self.log(*id, (*stream).into(), data),
            Event::Finished { id, wall, usage } => {
                self.flush_partial(*id);
                if let Some(step) = self.steps.get_mut(id) {
                    step.done = true;
                    let n = step.number;
                    self.line(&format!(
                        "#{n} DONE {}{}",
                        seconds(*wall),
                        usage_text(usage.as_ref())
                    ));
                }
            }
            Event::Failed {
                id,
                error,
                wall,
                usage,
            } => {
                self.flush_partial(*id);
                let n = self.step(event, *id, "").number;
                if let Some(step) = self.steps.get_mut(id) {
                    step.done = true;
                }
                self.line(&format!(
                    "#{n} ERROR after {}{}: {error}",
                    seconds(*wall),
                    usage_text(usage.as_ref())
                ));
            }
            Event::Canceled { id } => {
                self.flush_partial(*id);
                if let Some(step) = self.steps.get_mut(id) {
                    step.done = true;
                    let n = step.number;
                    self.line(&format!("#{n} CANCELED"));
                }
            }
        }
        self.redraw();
    }

    /// Prints complete lines of a log chunk, prefixed with the step and its elapsed time;
    /// keeps an unfinished last line until more arrives or the step ends.
    fn log(&mut self, id: usize, stream: StreamKey, data: &[u8]) {
        let Some(step) = self.steps.get_mut(&id) else {
            return;
        };
        let n = step.number;
        let elapsed = step.started.elapsed();
        let buf = step.partial.entry(stream).or_default();
        buf.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            lines.push(line);
        }
        for line in lines {
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.line(&format!("#{n} {:.3} {text}", elapsed.as_secs_f64()));
        }
    }

    fn flush_partial(&mut self, id: usize) {
        let Some(step) = self.steps.get_mut(&id) else {
            return;
        };
        let n = step.number;
        let elapsed = step.started.elapsed();
        let rest: Vec<Vec<u8>> = std::mem::take(&mut step.partial)
            .into_values()
            .filter(|b| !b.is_empty())
            .collect();
        for bytes in rest {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            self.line(&format!("#{n} {:.3} {text}", elapsed.as_secs_f64()));
        }
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
    }

    /// Erases the live area (tty only).
    fn erase(&mut self) {
        if self.mode == Mode::Tty && self.drawn > 0 {
            let _ = write!(self.out, "\x1b[{}F\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    /// Draws the running steps with their timers below the finished output (tty only).
    fn redraw(&mut self) {
        if self.mode != Mode::Tty {
            return;
        }
        self.erase();
        let running: Vec<String> = self
            .steps
            .values()
            .filter(|s| !s.done)
            .map(|s| {
                format!(
                    "=> #{} {} {:.1}s",
                    s.number,
                    s.name,
                    s.started.elapsed().as_secs_f64()
                )
            })
            .collect();
        let header = format!("[+] Building {:.1}s", self.start.elapsed().as_secs_f64());
        let _ = writeln!(self.out, "{header}");
        for line in &running {
            let _ = writeln!(self.out, "{line}");
        }
        self.drawn = running.len() + 1;
        let _ = self.out.flush();
    }

    fn finish(&mut self) {
        self.erase();
        let ids: Vec<usize> = self.steps.keys().copied().collect();
        for id in ids {
            self.flush_partial(id);
        }
        let _ = self.out.flush();
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn usage_text(usage: Option<&ResourceUsage>) -> String {
    let Some(u) = usage else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(peak) = u.peak_memory_bytes {
        #[allow(clippy::cast_precision_loss)] // a display of MiB
        parts.push(format!(
            "peak mem {:.1} MiB",
            peak as f64 / (1024.0 * 1024.0)
        ));
    }
    let cpu = u.cpu_user_us.unwrap_or(0) + u.cpu_system_us.unwrap_or(0);
    if u.cpu_user_us.is_some() || u.cpu_system_us.is_some() {
        #[allow(clippy::cast_precision_loss)] // a display of seconds
        parts.push(format!("cpu {:.3}s", cpu as f64 / 1e6));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    /// A short build: a cached FROM, a RUN whose output arrives in pieces (one line split
    /// across chunks, one on stderr, a last line without a newline), and a failing step.
    fn events() -> Vec<Event> {
        vec![
            Event::Cached {
                id: 7,
                name: "[stage-0 1/3] FROM busybox".into(),
                digest: "sha256:aa".into(),
                line: Some(1),
            },
            Event::Started {
                id: 8,
                name: "[stage-0 2/3] RUN make".into(),
                digest: "sha256:bb".into(),
                line: Some(2),
                reason: Some("build-arg VERSION changed (1.2 → 1.3)".into()),
            },
            Event::Log {
                id: 8,
                stream: Stream::Stdout,
                data: b"compiling a\ncompil".to_vec(),
            },
            Event::Log {
                id: 8,
                stream: Stream::Stderr,
                data: b"warning: w\n".to_vec(),
            },
            Event::Log {
                id: 8,
                stream: Stream::Stdout,
                data: b"ing b\nno newline at the end".to_vec(),
            },
            Event::Finished {
                id: 8,
                wall: Duration::from_millis(1500),
                usage: Some(ResourceUsage {
                    peak_memory_bytes: Some(3 * 1024 * 1024),
                    cpu_user_us: Some(200_000),
                    cpu_system_us: Some(50_000),
                }),
            },
            Event::Started {
                id: 9,
                name: "[stage-0 3/3] RUN false".into(),
                digest: "sha256:cc".into(),
                line: Some(3),
                reason: None,
            },
            Event::Failed {
                id: 9,
                error: "exit code 1".into(),
                wall: Duration::from_millis(20),
                usage: None,
            },
        ]
    }

    fn render(mode: Mode) -> String {
        let out = Captured::default();
        let mut r = Renderer::new(mode, Box::new(out.clone()));
        for e in &events() {
            r.event(e);
        }
        r.finish();
        out.text()
    }

    /// Drops the elapsed-seconds column of log lines (`#2 0.001 text` → `#2 text`).
    fn without_times(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| {
                let mut parts = l.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(n), Some(t), Some(rest)) if t.parse::<f64>().is_ok() => {
                        format!("{n} {rest}")
                    }
                    _ => l.to_owned(),
                }
            })
            .collect()
    }

    #[test]
    fn plain_shows_every_step_and_every_line_whole_and_prefixed() {
        assert_eq!(
            without_times(&render(Mode::Plain)),
            [
                "#1 [stage-0 1/3] FROM busybox",
                "#1 CACHED",
                "#2 [stage-0 2/3] RUN make",
                "#2 miss: build-arg VERSION changed (1.2 → 1.3)",
                "#2 compiling a",
                "#2 warning: w",
                "#2 compiling b",
                "#2 no newline at the end",
                "#2 DONE 1.500s (peak mem 3.0 MiB, cpu 0.250s)",
                "#3 [stage-0 3/3] RUN false",
                "#3 ERROR after 0.020s: exit code 1",
            ]
        );
    }

    #[test]
    fn json_is_one_event_per_line() {
        let text = render(Mode::Json);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON event"))
            .collect();
        assert_eq!(lines.len(), events().len());
        assert_eq!(lines[0]["event"], "cached");
        assert_eq!(lines[5]["event"], "finished");
        assert_eq!(lines[5]["wall_us"], 1_500_000);
    }

    #[test]
    fn tty_keeps_a_live_area_of_running_steps_with_timers() {
        let out = Captured::default();
        let mut r = Renderer::new(Mode::Tty, Box::new(out.clone()));
        let events = events();
        for e in &events[..3] {
            r.event(e);
        }
        // While RUN make runs, the live area names it with its timer.
        let live = out.text();
        let area = live.rsplit("[+] Building").next().unwrap();
        assert!(area.contains("=> #2 [stage-0 2/3] RUN make "), "{live}");
        assert!(area.trim_end().ends_with('s'), "no timer in {area:?}");
        for e in &events[3..] {
            r.event(e);
        }
        r.finish();
        let text = out.text();
        // Finished steps leave the live area: the last one drawn lists no step.
        let last_area = text.rsplit("[+] Building").next().unwrap();
        assert!(!last_area.contains("=> #"), "{last_area:?}");
        // And nothing was cut: every line of output is in the scrollback.
        for line in [
            "compiling a",
            "compiling b",
            "warning: w",
            "no newline at the end",
        ] {
            assert!(text.contains(line), "{line:?} missing from {text:?}");
        }
        assert!(text.contains("#2 DONE 1.500s"), "{text}");
    }
}
