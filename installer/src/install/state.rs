//! The install's receipt: `/var/lib/kubeferry/NAME/state.json`, with the steps finished and
//! every file the install wrote or moved aside, kept up to date as each file is written so that
//! `uninstall` can undo an install that stopped half-way; and the lock that lets one install
//! (or uninstall) run at a time.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::StepId;
use crate::error::{Error, Result};
use crate::host::{Host, write_file};

/// Where kubeferry keeps each installed bundle's rootfs, state and log.
pub const STATE_ROOT: &str = "/var/lib/kubeferry";

/// Files the install edits in place, line by line, rather than owning: never recorded, never
/// moved aside; uninstall takes its own lines out of them (by [`super::HOSTS_MARKER`]).
pub const EDITED_IN_PLACE: [&str; 1] = ["/etc/hosts"];

/// What is recorded as the install goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// SHA-256 of the manifest of the bundle being installed.
    pub bundle: String,
    /// The bundle's name and version.
    pub name: String,
    /// Steps finished, in order.
    pub done: Vec<StepId>,
    /// When each finished step finished (seconds since the epoch).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub finished: BTreeMap<StepId, u64>,
    /// The step that started and has not finished (a failure, a crash or Ctrl-C stopped it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<StepId>,
    /// Every file and directory the install wrote, as host paths, in the order written.
    pub files: Vec<PathBuf>,
    /// Files that were on the host before the install replaced them, and where they wait to be
    /// put back by uninstall.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<Backup>,
    /// Every systemd unit the install enabled or started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Where the rootfs was unpacked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_dir: Option<PathBuf>,
    /// The bundled registry as `domain:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The image's clean hooks, run first by uninstall.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clean_hooks: Vec<super::hooks::HookCommand>,
    /// The environment the hooks run with (the image's ENV).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hook_env: BTreeMap<String, String>,
    /// The API server this node joined (`join`), as `host:port`; none for `install`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<String>,
}

impl State {
    /// The steps of the run that wrote this state: `join`'s or `install`'s.
    pub fn steps(&self) -> &'static [StepId] {
        if self.joined.is_some() { &StepId::JOIN } else { &StepId::ALL }
    }
}

/// A host file the install replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// The host path.
    pub path: PathBuf,
    /// Where the original waits (a host path under the state directory).
    pub saved: PathBuf,
}

/// Where the state of the bundle `name` lives (a host path).
pub fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// Reads the state of `name`, if an install recorded one.
pub fn load_state(host: &dyn Host, name: &str) -> Result<Option<State>> {
    let path = host.path(&state_dir(name).join("state.json"));
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Io {
            action: "read the install state in",
            path,
            source: std::io::Error::other(e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &path)(e)),
    }
}

/// Writes the state of `name`.
pub fn save_state(host: &dyn Host, name: &str, state: &State) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::io("write", "state.json")(e.into()))?;
    write_file(host, &state_dir(name).join("state.json"), &bytes, 0o600)
}

/// Takes the exclusive lock of `name`'s state directory (created), held until dropped.
pub fn lock(host: &dyn Host, name: &str) -> Result<Flock<File>> {
    let dir = host.path(&state_dir(name));
    fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
    let lock_path = dir.join("install.lock");
    let lock_file = File::create(&lock_path).map_err(Error::io("create", &lock_path))?;
    Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| Error::Io {
        action: "lock",
        path: lock_path.clone(),
        source: std::io::Error::other("another kubeferry install or uninstall is running on this host"),
    })
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `seconds` since the epoch as an RFC 3339 UTC time, `2026-11-23T21:11:02Z`.
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

/// A [`Host`] that records, in the state file, every file written through it as it is written,
/// every unit it enables or starts, and moves a host file it is about to replace (one the
/// install did not write) into the state directory's `backup/`, so that uninstall can undo
/// what an install did even when it stopped half-way.
pub struct Recorder<'a> {
    inner: &'a dyn Host,
    name: String,
    state: Mutex<State>,
}

impl fmt::Debug for Recorder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<'a> Recorder<'a> {
    /// Records `state` of the bundle `name` through `inner`.
    pub fn new(inner: &'a dyn Host, name: &str, state: State) -> Recorder<'a> {
        Recorder { inner, name: name.to_string(), state: Mutex::new(state) }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while the state was held leaves it as it was: still the best record.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the state as recorded so far.
    pub fn state(&self) -> State {
        self.lock_state().clone()
    }

    /// Changes the state and saves it.
    pub fn update(&self, change: impl FnOnce(&mut State)) -> Result<()> {
        let mut state = self.lock_state();
        change(&mut state);
        save_state(self.inner, &self.name, &state)
    }

    /// Records a file or directory the install is about to make by other means than
    /// [`write_file`] (the rootfs), before it is made.
    pub fn record(&self, target: &Path) -> Result<()> {
        self.update(|state| {
            if !state.files.iter().any(|f| f == target) {
                state.files.push(target.to_path_buf());
            }
        })
    }

    fn recorded(&self, target: &Path) -> bool {
        target.starts_with(state_dir(&self.name)) || EDITED_IN_PLACE.iter().any(|p| Path::new(p) == target)
    }
}

impl Host for Recorder<'_> {
    fn path(&self, target: &Path) -> PathBuf {
        self.inner.path(target)
    }

    fn run(&self, command: &mut Command) -> Result<String> {
        self.inner.run(command)
    }

    fn run_watched(
        &self,
        command: &mut Command,
        every: std::time::Duration,
        watch: &mut dyn FnMut(crate::host::Watch<'_>),
    ) -> Result<String> {
        self.inner.run_watched(command, every, watch)
    }

    fn start_service(&self, unit: &str) -> Result<()> {
        self.note_service(unit)?;
        self.inner.start_service(unit)
    }

    fn stop_service(&self, unit: &str) -> Result<()> {
        self.inner.stop_service(unit)
    }

    fn enable_service(&self, unit: &str) -> Result<()> {
        self.note_service(unit)?;
        self.inner.enable_service(unit)
    }

    fn service_active(&self, unit: &str) -> bool {
        self.inner.service_active(unit)
    }

    fn reload_units(&self) -> Result<()> {
        self.inner.reload_units()
    }

    fn load_module(&self, name: &str) -> Result<()> {
        self.inner.load_module(name)
    }

    fn apply_sysctls(&self, file: &Path) -> Result<()> {
        self.inner.apply_sysctls(file)
    }

    fn will_write(&self, target: &Path) -> Result<()> {
        if self.recorded(target) {
            return Ok(());
        }
        let state = self.state();
        let ours = state.files.iter().any(|f| target.starts_with(f))
            || state.backups.iter().any(|b| b.path == target);
        let path = self.inner.path(target);
        if ours || fs::symlink_metadata(&path).is_err() {
            return Ok(());
        }
        let relative = target.strip_prefix("/").unwrap_or(target);
        let saved = state_dir(&self.name).join("backup").join(relative);
        let saved_path = self.inner.path(&saved);
        if let Some(parent) = saved_path.parent() {
            fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
        }
        move_file(&path, &saved_path)?;
        self.inner.log(&format!("moved {} aside to {}", target.display(), saved.display()));
        self.update(|state| state.backups.push(Backup { path: target.to_path_buf(), saved }))
    }

    fn wrote(&self, target: &Path) -> Result<()> {
        if self.recorded(target) {
            return Ok(());
        }
        self.record(target)
    }

    fn log(&self, line: &str) {
        self.inner.log(line)
    }
}

impl Recorder<'_> {
    fn note_service(&self, unit: &str) -> Result<()> {
        self.update(|state| {
            if !state.services.iter().any(|s| s == unit) {
                state.services.push(unit.to_string());
            }
        })
    }
}

/// Renames `from` to `to`, or copies and removes it when they are on different file systems.
pub fn move_file(from: &Path, to: &Path) -> Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            fs::copy(from, to).map_err(Error::io("copy", from))?;
            fs::remove_file(from).map_err(Error::io("remove", from))
        }
        Err(e) => Err(Error::io("move", from)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn a_state_of_an_earlier_version_still_reads() {
        let old = r#"{"bundle":"sha256:ab","name":"edge v1","done":["extract"],"files":["/x"]}"#;
        let state: State = serde_json::from_str(old).unwrap();
        assert_eq!(state.done, [StepId::Extract]);
        assert!(state.backups.is_empty() && state.running.is_none());
    }
}
