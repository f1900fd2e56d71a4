//! Renders a build's progress events: `plain` for CI logs, `tty` for a live terminal, `json`
//! for tools. No output is ever cut: every log chunk is printed whole, split into lines.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write};
use std::time::{Duration, Instant};

use hoist_solver::progress::{Event, ResourceUsage, Stream, json};
use tokio::sync::mpsc::UnboundedReceiver;

/// `--progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// `tty` on a terminal, else `plain`.
    Auto,
    Tty,
    Plain,
    Json,
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

/// Consumes events until the channel closes, writing them to stderr (progress goes to stderr,
/// as with `docker build`, so stdout stays free for the image id).
pub(crate) async fn render(mode: Mode, mut events: UnboundedReceiver<Event>) {
    let mut renderer = Renderer::new(mode.resolve());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            event = events.recv() => match event {
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
    out: std::io::Stderr,
    steps: BTreeMap<usize, Step>,
    next_number: usize,
    /// Lines of the live area drawn last time (tty), to be erased before the next draw.
    drawn: usize,
    start: Instant,
}

impl Renderer {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            out: std::io::stderr(),
            steps: BTreeMap::new(),
            next_number: 1,
            drawn: 0,
            start: Instant::now(),
        }
    }

    fn step(&mut self, id: usize, name: &str) -> &mut Step {
        let number = &mut self.next_number;
        self.steps.entry(id).or_insert_with(|| {
            let n = *number;
            *number += 1;
            Step {
                number: n,
                name: name.to_owned(),
                started: Instant::now(),
                partial: BTreeMap::new(),
                done: false,
            }
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
            Event::Started { id, name, .. } => {
                let n = self.step(*id, name).number;
                self.line(&format!("#{n} {name}"));
            }
            Event::Cached { id, name, .. } => {
                let step = self.step(*id, name);
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
                let n = self.step(*id, "").number;
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
