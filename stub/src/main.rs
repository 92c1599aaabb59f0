//! The installer stub: the static executable at the head of every kubeferry bundle. It reads
//! the bundle it is part of (`/proc/self/exe`), proves it intact and signed by a trusted key,
//! and unpacks or installs it.
//!
//! Exit codes: 0 ok, 1 failed, 2 usage, 3 not trusted or corrupt, 4 host refused,
//! 130 interrupted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kubeferry_installer::StreamOptions;
use kubeferry_installer::arch::Arch;
use kubeferry_installer::error::{Error, human_bytes};
use kubeferry_installer::extract::{self, ExtractOptions};
use kubeferry_installer::host::SystemHost;
use kubeferry_installer::install::{self, InstallConfig, JoinRequest, Outcome, StepId};
use kubeferry_installer::preflight::{self, Facts};
use kubeferry_installer::progress::Reporter;
use kubeferry_installer::reader::{Authenticity, Bundle, Verified};
use kubeferry_installer::registry::{Registry, RegistryConfig, RegistryError, Users};
use kubeferry_installer::trust::{TRUSTED_KEYS_DIR, Trust};
use kubeferry_term::{Terminal, print_error, render_summary, write_entries};

/// A self-extracting kubeferry bundle: Kubernetes for a host with no network.
#[derive(Debug, Parser)]
#[command(name = "kubeferry-stub", version, disable_help_subcommand = true)]
#[command(
    after_help = "Exit codes: 0 ok, 1 failed, 2 usage, 3 not trusted or corrupt, 4 host refused, 130 interrupted."
)]
struct Cli {
    /// Print nothing but errors and the command's data.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Read this bundle instead of the running file.
    #[arg(long, global = true, hide = true, value_name = "FILE")]
    bundle: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the signature and every byte of this file.
    Verify {
        #[command(flatten)]
        trust: TrustArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the files this bundle holds.
    List {
        #[command(flatten)]
        trust: TrustArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify, then unpack the rootfs into a directory (created; must be empty or absent).
    Extract {
        /// The directory to unpack into.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Replace the directory if it is not empty.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Verify, check this host, unpack and install Kubernetes.
    Install {
        #[command(flatten)]
        node: NodeArgs,
        /// The command run after the manifests are applied, instead of the image's CMD.
        #[arg(long, value_name = "COMMAND")]
        cmd: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Verify, check this host, unpack, and join it to the cluster a first node made with
    /// install (which printed this command).
    Join {
        /// The API server to join, as HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        server: String,
        /// The bootstrap token.
        #[arg(long)]
        token: String,
        /// The hash of the cluster's CA public key (sha256:...).
        #[arg(long, value_name = "sha256:HEX")]
        ca_cert_hash: String,
        /// Join as a control-plane node.
        #[arg(long)]
        control_plane: bool,
        /// The key of the control-plane certificates that install uploaded.
        #[arg(long, value_name = "HEX", requires = "control_plane")]
        certificate_key: Option<String>,
        /// The address of the registry the node pulls from [default: the server's host].
        #[arg(long, value_name = "ADDR")]
        registry_address: Option<std::net::IpAddr>,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Undo the install of this bundle: kubeadm reset, the services, every file it wrote; keeps
    /// the cluster's data (/etc/kubernetes, /var/lib/etcd, ...) unless --purge.
    Uninstall {
        /// Remove the cluster's data too: certificates, etcd, the kubelet's and containerd's data.
        #[arg(long)]
        purge: bool,
    },
    /// What is installed from this bundle, its versions, and the health of its services and
    /// registry (exit code 0 healthy, 1 not healthy or not installed).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve a registry storage directory read-only over the OCI distribution API, until
    /// stopped (the bundled registry's service runs this).
    ServeRegistry(ServeRegistryArgs),
}

/// The options of install and join that shape the node.
#[derive(Debug, Args)]
struct NodeArgs {
    /// Where the rootfs is unpacked (default /var/lib/kubeferry/NAME/rootfs).
    #[arg(long, value_name = "DIR")]
    rootfs_dir: Option<PathBuf>,
    /// Host checks to skip, comma-separated (names as printed, e.g. swap,port-6443; or all).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    ignore_preflight: Vec<String>,
    /// The address the API server advertises (needed on a host with no default route).
    #[arg(long, value_name = "ADDR")]
    advertise_address: Option<std::net::IpAddr>,
    /// The bundled registry's domain [default: the image's ENV registryDomain, else sea.hub].
    #[arg(long, value_name = "NAME")]
    registry_domain: Option<String>,
    /// The bundled registry's port [default: the image's ENV registryPort, else 5000].
    #[arg(long, value_name = "PORT")]
    registry_port: Option<u16>,
    /// The user the bundled registry serves, with --registry-password [default: the image's ENV
    /// registryUsername; none: no authentication].
    #[arg(long, value_name = "USER")]
    registry_username: Option<String>,
    /// The password of --registry-username [default: $KUBEFERRY_REGISTRY_PASSWORD, which other
    /// users cannot see in the process list, else the image's ENV registryPassword].
    #[arg(long, value_name = "PASSWORD")]
    registry_password: Option<String>,
    /// Where the registry keeps its data, filled from the bundle's registry/ [default: the image's
    /// ENV registryData, else the rootfs's registry/].
    #[arg(long, value_name = "DIR")]
    registry_data: Option<PathBuf>,
    /// kubeadm configuration documents merged over the image's, by kind, field by field.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the plan (every step, and which an earlier run finished) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Options of the registry service.
#[derive(Debug, Args)]
struct ServeRegistryArgs {
    /// The registry storage directory: the one that holds docker/registry/v2.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:5000")]
    listen: std::net::SocketAddr,
    /// Threads serving requests.
    #[arg(long, default_value_t = kubeferry_installer::registry::DEFAULT_THREADS)]
    threads: usize,
    /// Serve only the users of this htpasswd file (bcrypt hashes, as 'htpasswd -B' writes).
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
}

/// Which key the bundle must be signed by.
#[derive(Debug, Args)]
struct TrustArgs {
    /// Trust the public key in FILE (minisign format). May be repeated.
    #[arg(long, value_name = "FILE")]
    trusted_key: Vec<PathBuf>,
    /// Trust the key with this fingerprint (SHA256:...), checked with the publisher.
    #[arg(long, value_name = "FP")]
    key_fingerprint: Vec<String>,
    /// Skip the signature check. Only the digests are checked: anyone could have made this file.
    #[arg(long)]
    insecure_skip_verify: bool,
}

impl TrustArgs {
    fn trust(&self) -> Result<Trust, Error> {
        Trust::from_sources(&self.trusted_key, &self.key_fingerprint, true, self.insecure_skip_verify)
    }
}

fn main() -> ExitCode {
    kubeferry_term::tune_allocator();
    let cli = Cli::parse();
    let term = Terminal::new(cli.quiet);
    let file = cli.bundle.clone().unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let shown = shown_name(&file);
    let (context, result) = match &cli.command {
        None => (format!("could not read '{shown}'"), summary(&file, &shown)),
        Some(Command::Verify { trust, json }) => {
            let result = verify(&file, &shown, trust, *json, &term);
            if let (true, Err(e)) = (*json, &result) {
                println!(
                    "{}",
                    serde_json::json!({"file": shown, "verified": false, "error": e.to_string(), "exit_code": e.exit_code()})
                );
            }
            (format!("could not verify '{shown}'"), result)
        }
        Some(Command::List { trust, json }) => {
            (format!("could not list '{shown}'"), list(&file, trust, *json, &term))
        }
        Some(Command::Extract { to, force, trust }) => {
            (format!("could not extract '{shown}'"), extract_to(&file, to, *force, trust, &term))
        }
        Some(Command::Install { node, cmd, trust }) => {
            let options = InstallArgs { node, cmd: cmd.as_deref(), shown: &shown, join: None };
            (format!("could not install '{shown}'"), install(&file, &options, trust, &term))
        }
        Some(Command::Join {
            server,
            token,
            ca_cert_hash,
            control_plane,
            certificate_key,
            registry_address,
            node,
            trust,
        }) => {
            let params = kubeferry_installer::kubeadm::JoinParams {
                server: server.clone(),
                token: token.clone(),
                ca_cert_hash: ca_cert_hash.clone(),
                certificate_key: certificate_key.clone(),
                bundle: shown.clone(),
            };
            let join = JoinArgs {
                request: JoinRequest { params, control_plane: *control_plane },
                registry_address: *registry_address,
            };
            let options = InstallArgs { node, cmd: None, shown: &shown, join: Some(join) };
            (format!("could not join '{shown}' to {server}"), install(&file, &options, trust, &term))
        }
        Some(Command::Uninstall { purge }) => {
            (format!("could not uninstall '{shown}'"), uninstall(&file, *purge, &term))
        }
        Some(Command::Status { json }) => {
            return match status(&file, *json) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    print_error(&format!("could not read the status of '{shown}'"), &e, e.hint());
                    ExitCode::from(1)
                }
            };
        }
        Some(Command::ServeRegistry(args)) => {
            let context = format!("could not serve the registry in '{}'", args.root.display());
            return match serve_registry(args, &term) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    print_error(&context, &e, e.hint());
                    ExitCode::from(1)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&context, &e, e.hint());
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

/// The name the user ran, for messages: the bundle's file name rather than /proc/self/exe.
fn shown_name(file: &Path) -> String {
    let resolved = std::fs::read_link(file).unwrap_or_else(|_| file.to_path_buf());
    resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string())
}

/// Opens and authenticates the bundle, warning when the check was skipped.
fn open_verified(file: &Path, trust: &Trust, term: &Terminal) -> Result<(Bundle, Verified), Error> {
    let bundle = Bundle::open(file)?;
    let verified = bundle.authenticate(trust)?;
    if verified.authenticity == Authenticity::Unchecked {
        term.warn("--insecure-skip-verify: the signature was NOT checked; anyone could have made this file");
    }
    Ok((bundle, verified))
}

fn stream_options() -> StreamOptions {
    StreamOptions { cancel: Some(kubeferry_term::cancel_on_signal()), ..StreamOptions::default() }
}

fn summary(file: &Path, shown: &str) -> Result<(), Error> {
    let bundle = Bundle::open(file)?;
    let manifest = bundle.manifest_unverified()?;
    print!("{}", render_summary(Path::new(shown), bundle.trailer().file_len, &manifest, false));
    println!(
        "\nUsage: ./{shown} COMMAND\n\n\
         Commands:\n  \
         verify     check the signature and every byte of this file\n  \
         list       list the files this bundle holds\n  \
         extract    verify, then unpack the rootfs into a directory\n  \
         install    verify, check this host, unpack and install Kubernetes\n  \
         status     what is installed, and whether it is healthy\n  \
         uninstall  undo the install (--purge: the cluster's data too)\n\n\
         Trust: --trusted-key FILE, --key-fingerprint SHA256:..., or keys in {TRUSTED_KEYS_DIR}/\n\
         Run './{shown} COMMAND --help' for a command's options."
    );
    Ok(())
}

fn verify(file: &Path, shown: &str, trust: &TrustArgs, json: bool, term: &Terminal) -> Result<(), Error> {
    let (bundle, verified) = open_verified(file, &trust.trust()?, term)?;
    extract::verify(&bundle, &verified, &stream_options(), term)?;
    let m = &verified.manifest;
    let signer = match &verified.authenticity {
        Authenticity::Signed(fp) => fp.to_string(),
        Authenticity::Unchecked => "not checked".into(),
    };
    if json {
        println!(
            "{:#}",
            serde_json::json!({"file": shown, "verified": true, "signer": signer, "name": m.name,
                "version": m.version, "arch": m.arch, "size": bundle.trailer().file_len,
                "unpacked_size": m.payload.unpacked_size, "entries": m.index.entries})
        );
    } else {
        term.say(&format!("verified '{shown}': {} {} for {}, signed by {signer}", m.name, m.version, m.arch));
    }
    Ok(())
}

fn list(file: &Path, trust: &TrustArgs, json: bool, term: &Terminal) -> Result<(), Error> {
    let bundle = Bundle::open(file)?;
    let trust = trust.trust()?;
    let manifest = if trust.is_empty() {
        term.warn("no trusted key given: this lists what the file claims, unverified");
        bundle.manifest_unverified()?
    } else {
        open_verified(file, &trust, term)?.1.manifest
    };
    write_entries(&mut std::io::stdout().lock(), bundle.entries(&manifest), json)
}

fn extract_to(file: &Path, to: &Path, force: bool, trust: &TrustArgs, term: &Terminal) -> Result<(), Error> {
    let (bundle, verified) = open_verified(file, &trust.trust()?, term)?;
    let options = ExtractOptions { replace: force, skip_space_check: false, stream: stream_options() };
    let summary = extract::extract(&bundle, &verified, to, &options, term)?;
    term.say(&format!(
        "extracted {} entries ({}) into '{}'",
        summary.entries,
        human_bytes(summary.bytes),
        to.display()
    ));
    Ok(())
}

/// Serves until SIGINT or SIGTERM, then stops cleanly.
fn serve_registry(args: &ServeRegistryArgs, term: &Terminal) -> Result<(), RegistryError> {
    let stop = kubeferry_term::cancel_on_signal();
    let registry = Registry::start(RegistryConfig {
        root: args.root.clone(),
        listen: args.listen,
        threads: args.threads,
        users: args.htpasswd.as_deref().map(Users::read).transpose()?,
    })?;
    let users = match &args.htpasswd {
        Some(file) => format!(" to the users of '{}'", file.display()),
        None => String::new(),
    };
    term.say(&format!("serving '{}' read-only on {}{users}", args.root.display(), registry.local_addr()));
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    registry.stop();
    term.say("stopped");
    Ok(())
}

/// The install's options, apart from trust.
struct InstallArgs<'a> {
    node: &'a NodeArgs,
    cmd: Option<&'a str>,
    shown: &'a str,
    join: Option<JoinArgs>,
}

/// What `join` adds to install's options.
struct JoinArgs {
    request: JoinRequest,
    registry_address: Option<std::net::IpAddr>,
}

/// The registry password, kept out of the process list.
const REGISTRY_PASSWORD_ENV: &str = "KUBEFERRY_REGISTRY_PASSWORD";

/// A test hook: stop with an error right after this step (e.g. `runtime`), to test resuming.
const FAIL_AFTER_ENV: &str = "KUBEFERRY_FAIL_AFTER";

fn install(file: &Path, args: &InstallArgs<'_>, trust: &TrustArgs, term: &Terminal) -> Result<(), Error> {
    let (bundle, verified) = open_verified(file, &trust.trust()?, term)?;
    let m = &verified.manifest;
    if let Some(host) = Arch::host()
        && host != m.arch
    {
        return Err(Error::WrongArch {
            bundle: m.arch,
            wanted: host,
            instead: Some(format!("{}-{}-linux-{host}.run", m.name, m.version)),
        });
    }
    let node = args.node;
    let target = node
        .rootfs_dir
        .clone()
        .unwrap_or_else(|| Path::new("/var/lib/kubeferry").join(&m.name).join("rootfs"));

    let registry_address = match &args.join {
        None => "127.0.0.1".to_string(),
        Some(join) => match join.registry_address {
            Some(address) => address.to_string(),
            None => server_host(&join.request.params.server),
        },
    };
    let mut config = InstallConfig {
        rootfs_dir: target.clone(),
        registry_domain: kubeferry_installer::kubeadm::DEFAULT_REGISTRY_DOMAIN.into(),
        registry_port: kubeferry_installer::kubeadm::DEFAULT_REGISTRY_PORT,
        registry_address,
        registry_credentials: None,
        registry_data: None,
        progress_every: install::PROGRESS_EVERY,
        systemd_cgroup: true,
        fail_after: std::env::var(FAIL_AFTER_ENV).ok().and_then(|name| StepId::from_name(&name)),
        advertise_address: node.advertise_address.map(|a| a.to_string()),
        kubeadm_config: node.config.clone(),
        cmd: args.cmd.map(str::to_string),
        bundle_file: args.shown.to_string(),
        join: args.join.as_ref().map(|j| j.request.clone()),
    };
    let flags = install::registry::RegistryFlags {
        domain: node.registry_domain.clone(),
        port: node.registry_port,
        username: node.registry_username.clone(),
        password: node.registry_password.clone().or_else(|| std::env::var(REGISTRY_PASSWORD_ENV).ok()),
        data: node.registry_data.clone(),
    };
    install::registry::apply_settings(&mut config, &flags, &m.image.env)?;
    let plan = install::plan_of_bundle(&SystemHost::read_only(), &bundle, &verified, &config)?;
    if node.dry_run {
        print!("{plan}");
        return Ok(());
    }
    let bundled = install::bundled_tools(&bundle, &verified)?;
    let requirements =
        install::requirements(&verified, &bundled, &config, &plan, node.advertise_address.is_some());
    let findings = preflight::without_ignored(
        preflight::check(&Facts::gather(&requirements), &requirements),
        &node.ignore_preflight,
    );
    if !findings.is_empty() {
        return Err(Error::Preflight { findings });
    }
    let host = SystemHost::new(&install::state_dir(&m.name).join("install.log"))?;
    term.say(&format!("install log: '{}'", host.log_path().display()));
    match install::run(&host, &bundle, &verified, &config, term)? {
        Outcome::AlreadyDone => {
            term.say("this node is installed already: nothing to do");
            Ok(())
        }
        Outcome::Installed(_) if config.join.is_some() => {
            term.say(&format!(
                "joined this node to {} with '{}' {}",
                config.join.as_ref().map_or("", |j| j.params.server.as_str()),
                m.name,
                m.version
            ));
            Ok(())
        }
        Outcome::Installed(join) => {
            term.say(&format!("installed '{}' {}", m.name, m.version));
            if let Some(join) = join {
                println!(
                    "To join a worker node, run there:\n  {}\n  (or: {})\n\n\
                     To join a control-plane node, run there:\n  {}\n  (or: {})\n\n\
                     The token is valid for 24 hours; 'kubeadm token create --print-join-command' makes a new one.",
                    join.kubeferry_worker, join.worker, join.kubeferry_control_plane, join.control_plane
                );
            }
            Ok(())
        }
        Outcome::StoppedBefore(missing) => {
            let names = |steps: &mut dyn Iterator<Item = StepId>| {
                steps.map(|s| s.name()).collect::<Vec<_>>().join(", ")
            };
            Err(Error::InstallUnavailable {
                done: names(&mut config.steps().iter().copied().filter(|s| !missing.contains(s))),
                missing: names(&mut missing.into_iter()),
            })
        }
    }
}

/// The host of `HOST:PORT` (`[ADDR]:PORT` for IPv6).
fn server_host(server: &str) -> String {
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']').to_string()
}

/// Prints the status of this bundle's install; whether it is healthy.
fn status(file: &Path, json: bool) -> Result<bool, Error> {
    let name = Bundle::open(file)?.manifest_unverified()?.name;
    match kubeferry_installer::status::gather(&SystemHost::read_only(), &name)? {
        Some(status) if json => {
            println!("{:#}", serde_json::json!({"installed": true, "status": status}));
            Ok(status.healthy)
        }
        Some(status) => {
            print!("{status}");
            Ok(status.healthy)
        }
        None if json => {
            println!("{:#}", serde_json::json!({"installed": false, "name": name}));
            Ok(false)
        }
        None => {
            println!("'{name}' is not installed on this host");
            Ok(false)
        }
    }
}

/// Undoes the install recorded for this bundle's name. The bundle is read only for its name:
/// what is undone is what the state file records.
fn uninstall(file: &Path, purge: bool, term: &Terminal) -> Result<(), Error> {
    use kubeferry_installer::uninstall::{self, Phase, UninstallOptions};
    let name = Bundle::open(file)?.manifest_unverified()?.name;
    let options = UninstallOptions {
        purge,
        fail_after: std::env::var(FAIL_AFTER_ENV)
            .ok()
            .and_then(|name| Phase::ALL.into_iter().find(|p| p.name() == name)),
    };
    let host = SystemHost::new(&install::state_dir(&name).join("install.log"))?;
    let report = uninstall::run(&host, &name, &options)?;
    if !report.installed {
        term.say(&format!("'{name}' is not installed on this host: nothing to do"));
        return Ok(());
    }
    term.say(&format!(
        "uninstalled '{name}': {} files and directories removed, {} put back as they were",
        report.removed, report.restored
    ));
    if !report.kept.is_empty() {
        let kept: Vec<String> = report.kept.iter().map(|p| p.display().to_string()).collect();
        term.say(&format!("kept the cluster's data (uninstall --purge removes it): {}", kept.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
