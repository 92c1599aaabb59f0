//! The one place every side effect on a target host goes through.
//!
//! [`SystemHost`] is the real host: paths are what they say, commands run as they are, and
//! services are systemd units. Tests put another [`Host`] in its place that keeps every path
//! below a root directory and runs the same real programs, so that an install step can be
//! exercised without touching the machine that runs the tests.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A target host.
pub trait Host: Send + Sync {
    /// Where the host's absolute path `target` is for this process: `target` itself on a real
    /// host, the same path below a root directory in a test.
    fn path(&self, target: &Path) -> PathBuf;

    /// Runs a command to completion; its command line and output go to the install log.
    /// A command that fails is an error that names it and the log.
    fn run(&self, command: &mut Command) -> Result<String>;

    /// Runs a command as [`Host::run`] does, and while it runs tells `watch` each line of its
    /// output as it comes and, every `every`, how long it has been running. This default runs
    /// it to the end and then tells the lines; hosts that run real commands stream them.
    fn run_watched(
        &self,
        command: &mut Command,
        every: Duration,
        watch: &mut dyn FnMut(Watch<'_>),
    ) -> Result<String> {
        let _ = every;
        let output = self.run(command)?;
        output.lines().for_each(|line| watch(Watch::Line(line)));
        Ok(output)
    }

    /// Reloads the unit files and enables and starts `unit`.
    fn start_service(&self, unit: &str) -> Result<()>;

    /// Stops and disables `unit`; a unit that is not there is not an error.
    fn stop_service(&self, unit: &str) -> Result<()>;

    /// Reloads the unit files and enables `unit` without starting it (the kubelet: `kubeadm
    /// init` starts it).
    fn enable_service(&self, unit: &str) -> Result<()>;

    /// Whether `unit` is running.
    fn service_active(&self, unit: &str) -> bool;

    /// Makes the service manager forget unit files that were removed.
    fn reload_units(&self) -> Result<()>;

    /// Loads a kernel module now (`modprobe NAME`).
    fn load_module(&self, name: &str) -> Result<()>;

    /// Applies the kernel parameters of one sysctl file now (`sysctl -p FILE`; `file` is a host
    /// path as [`Host::path`] gives it).
    fn apply_sysctls(&self, file: &Path) -> Result<()>;

    /// Called by [`write_file`] before it puts `target` (a host path) in place: a recording host
    /// moves a file that is not its own aside here, to put it back on uninstall.
    fn will_write(&self, _target: &Path) -> Result<()> {
        Ok(())
    }

    /// Called by [`write_file`] once `target` is in place: a recording host notes it for
    /// uninstall.
    fn wrote(&self, _target: &Path) -> Result<()> {
        Ok(())
    }

    /// Appends a line to the install log.
    fn log(&self, line: &str);
}

/// What [`Host::run_watched`] tells while a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch<'a> {
    /// A line of its output (standard output or error), without its newline.
    Line(&'a str),
    /// It has been running this long, and goes on.
    Running(Duration),
}

/// Writes `bytes` to the host's `target` through a temporary file and a rename, creating the
/// parent directories, with `mode`.
pub fn write_file(host: &dyn Host, target: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    place(host, target, mode, |file| file.write_all(bytes).map(|()| bytes.len() as u64))?;
    host.log(&format!("wrote {} ({} bytes, mode {mode:o})", target.display(), bytes.len()));
    host.wrote(target)
}

/// Copies the file `source` (a path of this process) to the host's `target` as [`write_file`]
/// does, streaming it rather than holding it in memory (a kubelet is 100 MiB and more).
pub fn copy_file(host: &dyn Host, source: &Path, target: &Path, mode: u32) -> Result<()> {
    let mut from = fs::File::open(source).map_err(Error::io("open", source))?;
    let bytes = place(host, target, mode, |file| std::io::copy(&mut from, file))?;
    host.log(&format!("wrote {} ({bytes} bytes from {}, mode {mode:o})", target.display(), source.display()));
    host.wrote(target)
}

/// Puts a file at the host's `target` so that a crash at any moment leaves either the old file
/// or the whole new one: `fill` writes a temporary sibling, which is synced, renamed over the
/// target, and the directory synced so the rename itself is durable. Returns what `fill` says
/// it wrote.
fn place(
    host: &dyn Host,
    target: &Path,
    mode: u32,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<u64>,
) -> Result<u64> {
    let path = host.path(target);
    let parent = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    let partial = path.with_file_name(format!(
        ".{}.kubeferry-partial",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let _ = fs::remove_file(&partial);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&partial)
        .map_err(Error::io("create", &partial))?;
    let written = fill(&mut file).map_err(Error::io("write", &partial))?;
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(Error::io("set the mode of", &partial))?;
    file.sync_all().map_err(Error::io("sync", &partial))?;
    host.will_write(target)?;
    fs::rename(&partial, &path).map_err(Error::io("rename into place", &path))?;
    fs::File::open(parent).and_then(|dir| dir.sync_all()).map_err(Error::io("sync", parent))?;
    Ok(written)
}

/// The real host, with its install log.
#[derive(Debug)]
pub struct SystemHost {
    log: Mutex<Option<fs::File>>,
    log_path: PathBuf,
}

impl SystemHost {
    /// The real host for reading only (planning): it writes no log.
    pub fn read_only() -> SystemHost {
        SystemHost { log: Mutex::new(None), log_path: PathBuf::from("/dev/null") }
    }

    /// A real host that logs to `log_path` (created, appended to).
    pub fn new(log_path: &Path) -> Result<SystemHost> {
        if let Some(parent) = log_path.parent() {
            fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log_path)
            .map_err(Error::io("open", log_path))?;
        Ok(SystemHost { log: Mutex::new(Some(file)), log_path: log_path.to_path_buf() })
    }

    /// The install log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Host for SystemHost {
    fn path(&self, target: &Path) -> PathBuf {
        target.to_path_buf()
    }

    fn run(&self, command: &mut Command) -> Result<String> {
        run_logged(self, command, &self.log_path)
    }

    fn run_watched(
        &self,
        command: &mut Command,
        every: Duration,
        watch: &mut dyn FnMut(Watch<'_>),
    ) -> Result<String> {
        run_logged_watched(self, command, &self.log_path, every, watch)
    }

    fn start_service(&self, unit: &str) -> Result<()> {
        self.run(Command::new("systemctl").arg("daemon-reload"))?;
        self.run(Command::new("systemctl").args(["enable", "--now", unit])).map(|_| ())
    }

    fn stop_service(&self, unit: &str) -> Result<()> {
        // `disable --now` of a unit that does not exist fails; that is not an error here.
        let _ = self.run(Command::new("systemctl").args(["disable", "--now", unit]));
        Ok(())
    }

    fn enable_service(&self, unit: &str) -> Result<()> {
        self.run(Command::new("systemctl").arg("daemon-reload"))?;
        self.run(Command::new("systemctl").args(["enable", unit])).map(|_| ())
    }

    fn service_active(&self, unit: &str) -> bool {
        Command::new("systemctl").args(["is-active", "--quiet", unit]).status().is_ok_and(|s| s.success())
    }

    fn reload_units(&self) -> Result<()> {
        self.run(Command::new("systemctl").arg("daemon-reload")).map(|_| ())
    }

    fn load_module(&self, name: &str) -> Result<()> {
        self.run(Command::new("modprobe").arg(name)).map(|_| ())
    }

    fn apply_sysctls(&self, file: &Path) -> Result<()> {
        self.run(Command::new("sysctl").arg("-p").arg(file)).map(|_| ())
    }

    fn log(&self, line: &str) {
        if let Ok(mut guard) = self.log.lock()
            && let Some(file) = guard.as_mut()
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// Runs a command, logging its command line and output to `host`'s log; a failure names the
/// command, its exit status, the tail of its output and `log_path`.
pub fn run_logged(host: &dyn Host, command: &mut Command, log_path: &Path) -> Result<String> {
    let shown = shown_command(command);
    host.log(&format!("$ {command:?}"));
    let output = command.output().map_err(could_not_start(&shown, log_path))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    for line in stdout.lines().chain(stderr.lines()) {
        host.log(&format!("  {line}"));
    }
    finish(output.status, shown, stdout, &stderr, log_path)
}

/// [`run_logged`] that logs each line of the command's output as it comes and tells `watch` of
/// it, and tells `watch` every `every` how long the command has been running.
pub fn run_logged_watched(
    host: &dyn Host,
    command: &mut Command,
    log_path: &Path,
    every: Duration,
    watch: &mut dyn FnMut(Watch<'_>),
) -> Result<String> {
    let shown = shown_command(command);
    host.log(&format!("$ {command:?}"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(could_not_start(&shown, log_path))?;
    let (sender, lines) = mpsc::channel::<(bool, String)>();
    let mut readers = Vec::new();
    let pipes: [(bool, Option<Box<dyn std::io::Read + Send>>); 2] = [
        (false, child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>)),
        (true, child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>)),
    ];
    for (is_stderr, pipe) in pipes {
        let Some(pipe) = pipe else { continue };
        let sender = sender.clone();
        readers.push(std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string();
                        if sender.send((is_stderr, text)).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    drop(sender);
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let started = Instant::now();
    let mut next = started + every;
    loop {
        match lines.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok((is_stderr, line)) => {
                host.log(&format!("  {line}"));
                let out = if is_stderr { &mut stderr } else { &mut stdout };
                out.push_str(&line);
                out.push('\n');
                watch(Watch::Line(&line));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                watch(Watch::Running(started.elapsed()));
                next += every;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for reader in readers {
        // A reader thread that panicked has ended all the same.
        let _ = reader.join();
    }
    let status = child.wait().map_err(could_not_start(&shown, log_path))?;
    finish(status, shown, stdout, &stderr, log_path)
}

/// The program and its arguments, for errors; the log has the working directory and
/// environment too.
fn shown_command(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| format!("{part:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn could_not_start(shown: &str, log_path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let (command, log) = (shown.to_string(), log_path.to_path_buf());
    move |e| Error::Command { command, status: "could not start".into(), output: e.to_string(), log }
}

/// The command's standard output when it succeeded, else the error naming it and the tail of
/// its output.
fn finish(
    status: std::process::ExitStatus,
    shown: String,
    stdout: String,
    stderr: &str,
    log_path: &Path,
) -> Result<String> {
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().chain(stdout.lines()).rev().take(5).collect();
        return Err(Error::Command {
            command: shown,
            status: status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            log: log_path.to_path_buf(),
        });
    }
    Ok(stdout)
}

/// A host for unit tests of code that only maps paths, below `self.0`; anything else it is
/// asked is a bug in the test.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct PathsOnly(pub PathBuf);

#[cfg(test)]
impl Host for PathsOnly {
    fn path(&self, target: &Path) -> PathBuf {
        self.0.join(target.strip_prefix("/").unwrap_or(target))
    }
    fn run(&self, _: &mut Command) -> Result<String> {
        unreachable!("a paths-only test host runs nothing")
    }
    fn start_service(&self, _: &str) -> Result<()> {
        unreachable!("a paths-only test host runs nothing")
    }
    fn stop_service(&self, _: &str) -> Result<()> {
        unreachable!("a paths-only test host runs nothing")
    }
    fn enable_service(&self, _: &str) -> Result<()> {
        unreachable!("a paths-only test host runs nothing")
    }
    fn service_active(&self, _: &str) -> bool {
        unreachable!("a paths-only test host runs nothing")
    }
    fn reload_units(&self) -> Result<()> {
        unreachable!("a paths-only test host runs nothing")
    }
    fn load_module(&self, _: &str) -> Result<()> {
        unreachable!("a paths-only test host runs nothing")
    }
    fn apply_sysctls(&self, _: &Path) -> Result<()> {
        unreachable!("a paths-only test host runs nothing")
    }
    fn log(&self, _: &str) {}
}
