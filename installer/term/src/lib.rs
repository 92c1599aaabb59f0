//! The terminal front end shared by `kubeferry` and the installer stub: progress on stderr
//! (bars on a terminal, one plain line per step otherwise), the one error renderer
//! (`error:` / `caused by:` / `hint:`), and Ctrl-C handling that lets work clean up.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kubeferry_installer::error::human_bytes;
use kubeferry_installer::progress::Reporter;

/// Shows progress on stderr.
#[derive(Debug)]
pub struct Terminal {
    quiet: bool,
    bars: bool,
    state: Mutex<Option<Step>>,
}

#[derive(Debug)]
struct Step {
    name: String,
    total: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    /// The bars of the step and of its parts, on a terminal.
    multi: Option<MultiProgress>,
    /// The parts under way: label, total, and their bar on a terminal.
    parts: HashMap<usize, (String, u64, Option<ProgressBar>)>,
}

/// The style of a part's bar: indented under its step's, the label cut to fit.
const PART_TEMPLATE: &str = "  {msg:40!} [{bar:20}] {binary_bytes}/{binary_total_bytes}";

impl Terminal {
    /// A reporter: bars when stderr is a terminal, plain lines otherwise, nothing when quiet.
    pub fn new(quiet: bool) -> Self {
        Terminal { quiet, bars: std::io::stderr().is_terminal(), state: Mutex::new(None) }
    }

    /// Prints a line to stderr unless quiet.
    pub fn say(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}

impl Reporter for Terminal {
    fn begin(&self, step: &str, total: u64) {
        if self.quiet {
            return;
        }
        let multi = self.bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let bar = if let Some(multi) = &multi {
            let bar = multi.add(ProgressBar::new(total));
            let style = ProgressStyle::with_template(
                "{msg:>8} [{bar:32}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(step.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            eprintln!("{step}: {} ...", human_bytes(total));
            None
        };
        if let Ok(mut state) = self.state.lock() {
            *state = Some(Step {
                name: step.to_string(),
                total,
                started: Instant::now(),
                bar,
                multi,
                parts: HashMap::new(),
            });
        }
    }

    fn part_begin(&self, id: usize, label: &str, total: u64) {
        let Ok(mut state) = self.state.lock() else { return };
        let Some(step) = state.as_mut() else { return };
        let bar = step.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(total));
            let style = ProgressStyle::with_template(PART_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_string());
            bar
        });
        step.parts.insert(id, (label.to_string(), total, bar));
    }

    fn part_advance(&self, id: usize, bytes: u64) {
        if let Ok(state) = self.state.lock()
            && let Some((_, _, Some(bar))) = state.as_ref().and_then(|s| s.parts.get(&id))
        {
            bar.inc(bytes);
        }
    }

    fn part_end(&self, id: usize) {
        let Ok(mut state) = self.state.lock() else { return };
        let Some(step) = state.as_mut() else { return };
        let Some((label, total, bar)) = step.parts.remove(&id) else { return };
        match (bar, &step.multi) {
            (Some(bar), Some(multi)) => {
                bar.finish_and_clear();
                multi.remove(&bar);
            }
            // Without a terminal, a line per part: a log shows what was done.
            _ => eprintln!("  {label}: {}", human_bytes(total)),
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(state) = self.state.lock()
            && let Some(bar) = state.as_ref().and_then(|s| s.bar.as_ref())
        {
            bar.inc(bytes);
        }
    }

    fn end(&self) {
        let Some(step) = self.state.lock().ok().and_then(|mut s| s.take()) else { return };
        for bar in step.parts.into_values().filter_map(|(_, _, bar)| bar).chain(step.bar) {
            bar.finish_and_clear();
        }
        let secs = step.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { (step.total as f64 / secs) as u64 } else { 0 };
        eprintln!("{}: {} in {secs:.1}s ({}/s)", step.name, human_bytes(step.total), human_bytes(rate));
    }

    fn note(&self, line: &str) {
        self.say(line);
    }

    fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }
}

/// Prints an error the one way kubeferry prints errors:
///
/// ```text
/// error: could not verify 'edge-v1.28.4-linux-amd64.run'
///   caused by: signature was made by key SHA256:... which is not trusted on this host
///
/// hint: pass --trusted-key FILE, ...
/// ```
pub fn print_error(context: &str, error: &(dyn StdError + 'static), hint: Option<String>) {
    eprintln!("{}", render_error(context, error, hint));
}

/// The text [`print_error`] prints.
pub fn render_error(context: &str, error: &(dyn StdError + 'static), hint: Option<String>) -> String {
    let mut out = format!("error: {context}");
    let mut cause: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = cause {
        out.push_str(&format!("\n  caused by: {e}"));
        cause = e.source();
    }
    if let Some(hint) = hint {
        out.push_str(&format!("\n\nhint: {hint}"));
    }
    out
}

/// Keeps peak memory bounded by what the pipeline holds, without paying for it in page
/// faults. With one heap arena per thread, glibc keeps the 4 MiB chunk buffers freed by one
/// thread resident in its arena while other threads allocate afresh in theirs: measured, that
/// doubled the peak RSS of an extraction (51 MiB instead of 27 MiB). Forcing such buffers out of
/// the heap with a low mmap threshold bounds memory too, but then every buffer is a fresh
/// mapping faulted in page by page: a 2 GiB build spent 3.9 s in the kernel instead of 1.7 s.
/// One arena for the whole process does both. Call it first thing in `main`, before any
/// thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called before any other
    // thread exists, and M_ARENA_MAX with a positive value has no other effect.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Installs a handler for SIGINT, SIGTERM and SIGHUP that sets the returned flag, so that
/// long work stops at its next check and removes what it half-wrote. A second signal exits
/// at once.
pub fn cancel_on_signal() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&flag);
    let _ = ctrlc::set_handler(move || {
        if seen.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(kubeferry_installer::error::exit::INTERRUPTED);
        }
    });
    flag
}

/// The summary `kubeferry inspect` and the stub print: what the manifest says of the bundle.
pub fn render_summary(
    file: &std::path::Path,
    size: u64,
    manifest: &kubeferry_installer::manifest::Manifest,
    checked: bool,
) -> String {
    let signer = match &manifest.signer {
        Some(s) => format!("{} (minisign key id {})", s.fingerprint, s.key_id),
        None => "nobody (unsigned)".into(),
    };
    let ratio = if manifest.payload.size > 0 {
        manifest.payload.unpacked_size as f64 / manifest.payload.size as f64
    } else {
        1.0
    };
    let stored = manifest
        .payload
        .chunks
        .iter()
        .filter(|c| c.codec == kubeferry_installer::manifest::Codec::Stored)
        .count();
    let lines = [
        ("file", format!("{} ({})", file.display(), human_bytes(size))),
        ("name", manifest.name.clone()),
        ("version", manifest.version.clone()),
        ("arch", manifest.arch.to_string()),
        ("kubernetes", manifest.kubernetes_version.clone().unwrap_or_else(|| "unknown".into())),
        ("cri", manifest.cri.clone().unwrap_or_else(|| "unknown".into())),
        ("builder", manifest.builder.clone()),
        ("signed by", signer),
        ("stub", format!("{} {}", human_bytes(manifest.stub.size), manifest.stub.digest)),
        (
            "payload",
            format!(
                "{} packed, {} unpacked ({ratio:.2}x), {} chunks ({stored} stored as is)",
                human_bytes(manifest.payload.size),
                human_bytes(manifest.payload.unpacked_size),
                manifest.payload.chunks.len()
            ),
        ),
        (
            "entries",
            format!(
                "{} in an index of {} ({} blocks)",
                manifest.index.entries,
                human_bytes(manifest.index.size),
                manifest.index.blocks.len()
            ),
        ),
        (
            "checked",
            if checked {
                "signature and every digest verified".into()
            } else {
                "no: this is what the file claims; run 'verify' to check it".into()
            },
        ),
    ];
    let mut text: String = lines.iter().map(|(k, v)| format!("{:<11} {v}\n", format!("{k}:"))).collect();
    if !manifest.images.is_empty() {
        text.push_str(&format!("{:<11} {} in registry/\n", "images:", manifest.images.len()));
        let width = manifest.images.iter().map(|i| i.name.len()).max().unwrap_or(0);
        for image in &manifest.images {
            let platforms =
                if image.platforms.is_empty() { "-".to_string() } else { image.platforms.join(",") };
            text.push_str(&format!(
                "  {:<width$}  {}  {platforms}  {}\n",
                image.name,
                image.digest,
                human_bytes(image.size)
            ));
        }
    }
    text
}

/// Writes the file list `kubeferry inspect` and the stub's `list` print, as the index is read:
/// a table, or with `json` a JSON array of the entries. A reader that stops reading (`| head`)
/// ends the listing quietly.
pub fn write_entries(
    out: &mut dyn std::io::Write,
    entries: impl Iterator<Item = kubeferry_installer::Result<kubeferry_installer::manifest::Entry>>,
    json: bool,
) -> kubeferry_installer::Result<()> {
    use kubeferry_installer::manifest::Entry;
    let mut write = |text: &str| out.write_all(text.as_bytes());
    let go = || -> Result<std::io::Result<()>, kubeferry_installer::Error> {
        let mut first = true;
        let header = if json {
            "[".to_string()
        } else {
            format!("{:<8} {:>4} {:>10}  PATH\n", "TYPE", "MODE", "SIZE")
        };
        if let Err(e) = write(&header) {
            return Ok(Err(e));
        }
        for entry in entries {
            let entry = entry?;
            let line = if json {
                let sep = if first { "\n  " } else { ",\n  " };
                format!("{sep}{}", serde_json::to_string(&entry).unwrap_or_default())
            } else {
                let (mode, size, suffix) = match &entry {
                    Entry::Dir { mode, .. } => (mode.to_string(), "-".to_string(), String::new()),
                    Entry::File { mode, size, .. } => (mode.to_string(), human_bytes(*size), String::new()),
                    Entry::Symlink { target, .. } => ("-".into(), "-".into(), format!(" -> {target}")),
                    Entry::Hardlink { target, .. } => ("-".into(), "-".into(), format!(" => {target}")),
                };
                format!("{:<8} {mode:>4} {size:>10}  {}{suffix}\n", entry.kind(), entry.path())
            };
            first = false;
            if let Err(e) = write(&line) {
                return Ok(Err(e));
            }
        }
        Ok(if json { write(if first { "]\n" } else { "\n]\n" }) } else { Ok(()) })
    };
    match go()? {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(kubeferry_installer::Error::io("write", "standard output")(e))
        }
        _ => Ok(()),
    }
}
