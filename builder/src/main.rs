//! `kubeferry`: builds, signs, inspects and verifies self-extracting Kubernetes bundles.
//!
//! Exit codes: 0 ok, 1 failed, 2 usage, 3 not trusted or corrupt, 130 interrupted.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
use kubeferry_builder::pack::{self, Spec, sidecar};
use kubeferry_builder::pull::{Counters, Platform, PullError, PullOptions, Puller, auth};
use kubeferry_builder::reference::Reference;
use kubeferry_builder::{Error, archive, base, collect, error, images, kubefile, sign, stored, stub};
use kubeferry_installer::arch::Arch;
use kubeferry_installer::error::human_bytes;
use kubeferry_installer::extract::ExtractOptions;
use kubeferry_installer::keys::{FileDigest, PublicKey, SecretKey};
use kubeferry_installer::manifest::{Digest, ImageConfig, ImageRecord};
use kubeferry_installer::progress::Reporter as _;
use kubeferry_installer::reader::Bundle;
use kubeferry_installer::trust::Trust;
use kubeferry_installer::{StreamOptions, extract};
use kubeferry_term::{Terminal, print_error, render_summary, write_entries};

/// Carries Kubernetes across the air gap: packs a cluster rootfs and an installer stub into
/// one signed, self-extracting file per CPU architecture.
#[derive(Debug, Parser)]
#[command(name = "kubeferry", version)]
#[command(after_help = "Exit codes: 0 ok, 1 failed, 2 usage, 3 not trusted or corrupt, 130 interrupted.")]
struct Cli {
    /// Print nothing but errors and the command's data.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a signing key pair: PREFIX.key (private, mode 0600) and PREFIX.pub, in the
    /// minisign format.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Build one NAME-VERSION-linux-ARCH.run per architecture from a CloudRootfs directory.
    Build(Box<BuildArgs>),
    /// Sign a bundle built with --unsigned (after checking every digest in it).
    Sign {
        /// The private key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Sign again a bundle that is already signed.
        #[arg(long)]
        force: bool,
        /// The bundle.
        file: PathBuf,
    },
    /// Show what a bundle holds, from its manifest, without reading the payload.
    Inspect {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The bundle.
        file: PathBuf,
    },
    /// List every container image a rootfs needs, and which file asks for it.
    ///
    /// Looks in manifests/ (YAML documents and imageList files), charts/*/values.yaml,
    /// images/shim/ and the kubeadm configuration (the control plane images).
    Images {
        /// Print JSON: an object from each reference to the places that name it.
        #[arg(long)]
        json: bool,
        /// The CloudRootfs directory.
        rootfs: PathBuf,
    },
    /// Check a bundle's signature and every byte of it, without running any of it; checks
    /// FILE.minisig too when it is there.
    Verify {
        /// The public key to trust.
        #[arg(long, value_name = "FILE", required_unless_present = "key_fingerprint")]
        key: Vec<PathBuf>,
        /// Trust the key with this fingerprint (SHA256:...).
        #[arg(long, value_name = "FP")]
        key_fingerprint: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The bundle.
        file: PathBuf,
    },
    /// Pull images from registries into a registry storage directory (docs/pull.md).
    #[command(hide = true)]
    Pull(PullArgs),
}

/// `kubeferry pull REF... --out DIR`: the image collection of a build, on its own.
#[derive(Debug, Args)]
struct PullArgs {
    /// Image references (docker's syntax: nginx, registry.k8s.io/pause:3.9, name@sha256:...).
    #[arg(required = true)]
    references: Vec<String>,
    /// The directory to store into (it gets docker/registry/v2, as a rootfs's registry/).
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,
    /// Platforms to pull from a multi-platform image, comma-separated (amd64, arm64/v8,
    /// linux/arm/v7).
    #[arg(long, value_delimiter = ',', default_value = host_arch())]
    arch: Vec<String>,
    /// Keep every platform of a multi-platform image.
    #[arg(long)]
    all_platforms: bool,
    #[command(flatten)]
    registries: RegistryArgs,
    /// Parallel blob downloads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Print the images pulled as JSON.
    #[arg(long)]
    json: bool,
}

/// How images are pulled from registries: shared by `build` and `pull`.
#[derive(Debug, Args)]
struct RegistryArgs {
    /// The blob cache [default: $XDG_CACHE_HOME/kubeferry/blobs or ~/.cache/kubeferry/blobs].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Credentials for a registry, HOST=USER:PASSWORD (before ~/.docker/config.json).
    #[arg(long, value_name = "HOST=USER:PASS")]
    registry_auth: Vec<String>,
    /// The docker configuration file to read credentials from [default:
    /// $DOCKER_CONFIG/config.json or ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// Send requests for a registry (or registry/prefix) to another, FROM=TO; images keep
    /// their original names (--mirror sea.hub:5000=registry.k8s.io).
    #[arg(long, value_name = "FROM=TO")]
    mirror: Vec<String>,
    /// Speak plain HTTP to this registry (loopback registries always are).
    #[arg(long, value_name = "HOST")]
    insecure_registry: Vec<String>,
}

impl RegistryArgs {
    fn options(&self, platforms: Vec<Platform>, jobs: u16) -> Result<PullOptions, PullError> {
        Ok(PullOptions {
            platforms,
            cache_dir: self.cache_dir.clone(),
            docker_config: self.docker_config.clone(),
            registry_auth: self
                .registry_auth
                .iter()
                .map(|a| auth::parse_registry_auth(a))
                .collect::<Result<Vec<_>, _>>()?,
            mirrors: self.mirror.iter().map(|m| m.parse()).collect::<Result<Vec<_>, _>>()?,
            insecure: self.insecure_registry.clone(),
            jobs: usize::from(jobs),
            cancel: Some(kubeferry_term::cancel_on_signal()),
            ..PullOptions::default()
        })
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Images: every image the rootfs names (see 'kubeferry images') that its registry/ does \
not hold is pulled for each architecture into the bundle's registry/, and the signed manifest lists \
every image of registry/. With --no-pull, a missing image is an error, or with --allow-missing-images a \
warning."
)]
struct BuildArgs {
    /// The CloudRootfs directory (bin/, cri/, etc/, images/, registry/, scripts/, manifests/,
    /// and per-architecture folders such as amd64/ and arm64/); with --file, the build context
    /// the Kubefile's FROM and COPY read from.
    #[arg(required_unless_present = "from")]
    rootfs: Option<PathBuf>,
    /// Assemble the rootfs as this Kubefile says (FROM scratch, a directory, a bundle or an
    /// image; COPY, ENV, ARG, LABEL, CMD, ENTRYPOINT); ARCH and TARGETARCH are set to each
    /// target architecture.
    #[arg(long = "file", short = 'f', value_name = "KUBEFILE")]
    kubefile: Option<PathBuf>,
    /// A public key trusted to have signed a FROM bundle, besides the key of --key and the
    /// keys in /etc/kubeferry/trusted-keys/.
    #[arg(long, value_name = "FILE", requires = "kubefile")]
    trusted_key: Vec<PathBuf>,
    /// A value for an ARG of the Kubefile, as NAME=VALUE.
    #[arg(long, value_name = "NAME=VALUE", requires = "kubefile")]
    build_arg: Vec<String>,
    /// Cluster image name, the first part of the file name.
    #[arg(long)]
    name: String,
    /// Cluster image version.
    #[arg(long)]
    version: String,
    /// Target architectures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = host_arch())]
    arch: Vec<Arch>,
    /// The private key to sign with.
    #[arg(long, value_name = "FILE", required_unless_present = "unsigned")]
    key: Option<PathBuf>,
    /// Build without signing; sign later with 'kubeferry sign'.
    #[arg(long, conflicts_with = "key")]
    unsigned: bool,
    /// Output directory.
    #[arg(long, short, value_name = "DIR", default_value = "dist")]
    out: PathBuf,
    /// The stub for an architecture, as ARCH=PATH (default: kubeferry-stub-ARCH beside
    /// kubeferry, in ../lib/kubeferry, or in $KUBEFERRY_STUB_DIR).
    #[arg(long, value_name = "ARCH=PATH", value_parser = parse_stub)]
    stub: Vec<(Arch, PathBuf)>,
    /// The Kubernetes version, when the rootfs's kubeadm configuration does not say it.
    #[arg(long)]
    kubernetes_version: Option<String>,
    /// zstd compression level. At the default, ELF files (executables, libraries) are
    /// compressed with zstd's fast strategy and level 3's tables: about 20% less CPU time for
    /// 1.7% more bytes (docs/format.md)
    #[arg(long, default_value_t = pack::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// Compression threads [default: one per core, at most 4]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// Contact no registry: an image the rootfs names that its registry/ does not hold is an
    /// error, naming the file that asks for it.
    #[arg(long, help_heading = "Images")]
    no_pull: bool,
    /// With --no-pull: build even when images are missing from registry/, with a warning for
    /// each (the installed cluster will not find them).
    #[arg(long, requires = "no_pull", help_heading = "Images")]
    allow_missing_images: bool,
    #[command(flatten, next_help_heading = "Images")]
    registries: RegistryArgs,
    /// Parallel blob downloads.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), help_heading = "Images")]
    pull_jobs: u16,
    /// Build from cluster images in registries instead of a directory: each image's layers,
    /// in order, the later images' over the earlier ones' (a rootfs image, then application
    /// images, as sealos combines them).
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["rootfs", "kubefile"])]
    from: Vec<String>,
}

const fn host_arch() -> &'static str {
    if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }
}

fn parse_stub(text: &str) -> Result<(Arch, PathBuf), String> {
    let (arch, path) = text.split_once('=').ok_or("expected ARCH=PATH")?;
    Ok((
        arch.parse().map_err(|e: kubeferry_installer::arch::UnknownArch| e.to_string())?,
        PathBuf::from(path),
    ))
}

fn main() -> ExitCode {
    kubeferry_term::tune_allocator();
    let cli = Cli::parse();
    let term = Terminal::new(cli.quiet);
    let (context, result) = match cli.command {
        Command::Keygen { out } => ("could not create the key pair".to_string(), keygen(&out)),
        Command::Build(args) => {
            let source = match &args.rootfs {
                Some(rootfs) => rootfs.display().to_string(),
                None => args.from.join("', '"),
            };
            (format!("could not build from '{source}'"), build(&args, &term))
        }
        Command::Sign { key, force, file } => {
            (format!("could not sign '{}'", file.display()), sign_file(&key, force, &file, &term))
        }
        Command::Inspect { json, file } => {
            (format!("could not inspect '{}'", file.display()), inspect(&file, json))
        }
        Command::Images { json, rootfs } => {
            (format!("could not list the images of '{}'", rootfs.display()), images(&rootfs, json))
        }
        Command::Verify { key, key_fingerprint, json, file } => {
            let result = verify(&key, &key_fingerprint, &file, json, &term);
            if json && let Err(e) = &result {
                let value = serde_json::json!({
                    "file": file, "verified": false, "error": error_chain(e), "exit_code": e.exit_code()
                });
                println!("{value}");
            }
            (format!("could not verify '{}'", file.display()), result)
        }
        Command::Pull(args) => ("could not pull the images".to_string(), pull(&args, &term)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&context, &e, e.hint());
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    parts.join(": ")
}

fn keygen(prefix: &Path) -> Result<(), Error> {
    let key = SecretKey::generate()?;
    let secret = sidecar(prefix, "key");
    let public = sidecar(prefix, "pub");
    if public.exists() {
        return Err(Error::io("create", &public)(std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
    }
    key.write_new(&secret)?;
    pack::write_atomic(&public, key.public_key().to_file_string().as_bytes())?;
    eprintln!("wrote '{}' (private, 0600) and '{}'", secret.display(), public.display());
    println!("{}", key.public_key().fingerprint());
    Ok(())
}

fn build(args: &BuildArgs, term: &Terminal) -> Result<(), Error> {
    pack::check_name("name", &args.name)?;
    pack::check_name("version", &args.version)?;
    let key = args.key.as_deref().map(SecretKey::read).transpose()?;
    let mtime = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let cancel = kubeferry_term::cancel_on_signal();
    let mut arches = args.arch.clone();
    arches.sort();
    arches.dedup();
    // Find every stub before packing anything, so a missing one fails fast.
    let stubs = arches
        .iter()
        .map(|&arch| {
            let given = args.stub.iter().rev().find(|(a, _)| *a == arch).map(|(_, p)| p.as_path());
            stub::load(arch, given)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let kubefile_text = match &args.kubefile {
        Some(path) => Some(std::fs::read_to_string(path).map_err(Error::io("read", path))?),
        None => None,
    };
    let build_args = args
        .build_arg
        .iter()
        .map(|a| {
            a.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or(Error::BuildArg(a.clone()))
        })
        .collect::<Result<BTreeMap<_, _>, Error>>()?;
    // A FROM bundle is trusted when signed by a --trusted-key, the signing key itself, or a key
    // of the host's trusted-keys directory.
    let mut base_trust = Trust::from_sources(&args.trusted_key, &[], true, false)?;
    if let Some(key) = &key {
        base_trust.keys.push(key.public_key());
    }
    let pull_options = {
        let mut options = args.registries.options(Vec::new(), args.pull_jobs)?;
        options.cancel = Some(cancel.clone());
        options
    };
    std::fs::create_dir_all(&args.out).map_err(Error::io("create", &args.out))?;
    let mut unpacked = Unpacked(Vec::new());
    // Every architecture's bundle is packed before any is sealed and renamed into place, so
    // that a missing image or a failed pull leaves no bundle behind.
    let mut packed_arches = Vec::new();
    let mut counters = Counters::default();
    for (&arch, (stub_path, stub_bytes)) in arches.iter().zip(&stubs) {
        let (mut layers, image) = match (&kubefile_text, &args.rootfs) {
            (Some(text), Some(rootfs)) => {
                let mut build_args = build_args.clone();
                for name in ["ARCH", "TARGETARCH"] {
                    build_args.entry(name.to_string()).or_insert_with(|| arch.to_string());
                }
                let kubefile = kubefile::parse(text, &build_args)?;
                let mut base = ImageConfig::default();
                let mut open_base = |source: kubefile::BaseSource<'_>| {
                    let (dir, image) = match source {
                        kubefile::BaseSource::Bundle(path) => {
                            unpack_base(path, arch, &base_trust, &args.out, term)?
                        }
                        kubefile::BaseSource::Image(reference) => {
                            let dir = base_dir(&args.out, arch);
                            unpacked.push(dir.clone());
                            pull_base(reference, arch, &pull_options, &dir, term)
                                .map_err(|e| error_chain(&e))?
                        }
                    };
                    unpacked.push(dir.clone());
                    base = image;
                    Ok(dir)
                };
                let layers = kubefile.layers(rootfs, &mut open_base)?;
                // As an image's do, ENV and LABEL add to the base's; CMD and ENTRYPOINT replace it.
                base.env.extend(kubefile.env.clone());
                base.labels.extend(kubefile.labels.clone());
                let image = ImageConfig {
                    env: base.env,
                    labels: base.labels,
                    cmd: kubefile.cmd.clone().or(base.cmd),
                    entrypoint: kubefile.entrypoint.clone().or(base.entrypoint),
                };
                (layers, image)
            }
            (None, Some(rootfs)) => (vec![collect::Layer::root(rootfs)], ImageConfig::default()),
            (_, None) => {
                let dir = base_dir(&args.out, arch);
                unpacked.push(dir.clone());
                let image = from_images(&args.from, arch, &pull_options, &dir, term)?;
                (vec![collect::Layer::root(&dir)], image)
            }
        };
        // Image archives in images/ go into the bundle's registry/.
        let registry = args.out.join(format!(".kubeferry-archives-{arch}"));
        unpacked.push(registry.clone());
        let archives = import_archives(&layers, arch, &registry, term)?;
        if !archives.is_empty() {
            layers.push(collect::Layer { source: registry, at: "registry".into() });
        }
        let label = |names: &[&str]| names.iter().find_map(|n| image.labels.get(*n).cloned());
        let cri = label(&["cluster.alpha.sealer.io/container-runtime-type"]);
        let version = label(&["cluster.alpha.sealer.io/cluster-runtime-version", "version"]);
        let spec = Spec {
            kubernetes_version: args.kubernetes_version.clone(),
            image: image.clone(),
            mtime,
            level: args.level,
            jobs: args.jobs.map_or(0, usize::from),
            cancel: Some(cancel.clone()),
            ..Spec::new(&args.name, &args.version, arch)
        };
        term.say(&format!("building {} with stub '{}'", spec.file_name(), stub_path.display()));
        // The images the tree names are found while its payload is packed; only when some must
        // be pulled first is packing stopped, and done again once they are in.
        let pack = |layers: &[collect::Layer], stop: Option<&AtomicBool>| -> Result<pack::Unsealed, Error> {
            // A first walk reads no content: it finds what cannot be packed before anything is
            // written, learns what the tree says about itself, and gives the progress bar its
            // total. The imported archives are left out: their images are in registry/.
            let walk = || collect::walk_layers_except(layers.to_vec(), arch, archives.clone());
            let (_, unpacked_size, facts) = collect::measure(walk()?)?;
            let spec = Spec {
                kubernetes_version: spec
                    .kubernetes_version
                    .clone()
                    .or(facts.kubernetes_version)
                    .or(version.clone()),
                cri: facts.cri.or(cri.clone()),
                ..spec.clone()
            };
            pack::pack_payload(stub_bytes, walk()?, unpacked_size, &spec, stop, &args.out, term)
        };
        let stop = AtomicBool::new(false);
        let (found, payload) = std::thread::scope(|scope| {
            let finder = scope.spawn(|| {
                let found = find_images(&layers, arch);
                if found.as_ref().map_or(true, |f| !f.missing.is_empty() && !args.no_pull) {
                    stop.store(true, Ordering::Relaxed);
                }
                found
            });
            let payload = pack(&layers, Some(&stop));
            (finder.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), payload)
        });
        let found = found?;
        let pulling = !found.missing.is_empty() && !args.no_pull;
        let images = collect_images(args, arch, found, &mut layers, &mut unpacked, &mut counters, term)?;
        let payload = if pulling {
            // Dropped first: it removes its partial file, which the new one replaces.
            drop(payload);
            pack(&layers, None)?
        } else {
            payload?
        };
        packed_arches.push((payload, images));
    }
    if counters.blobs_fetched + counters.cache_hits > 0 {
        term.say(&format!("images: {}", describe_counters(&counters)));
    }
    for (payload, images) in packed_arches {
        let packed = payload.seal(images, key.as_ref())?;
        let m = &packed.manifest;
        term.say(&format!(
            "wrote '{}': {}, {} entries, {} unpacked, {}",
            packed.path.display(),
            human_bytes(packed.size),
            m.index.entries,
            human_bytes(m.payload.unpacked_size),
            match &m.signer {
                Some(s) => format!("signed by {}", s.fingerprint),
                None => "unsigned".to_string(),
            }
        ));
        println!("{}", packed.path.display());
    }
    Ok(())
}

/// What the tree of a bundle names and holds of container images.
struct FoundImages {
    /// How many images the tree names.
    named: usize,
    /// Those its registry/ holds, and the tags it holds that nothing names.
    records: Vec<ImageRecord>,
    /// Those it names and does not hold, with the places that name them.
    missing: Vec<(String, Vec<String>)>,
}

/// Finds the images the tree of `layers` names for `arch`, and which of them its registry/
/// holds.
fn find_images(layers: &[collect::Layer], arch: Arch) -> Result<FoundImages, Error> {
    let scan = stored::scan(collect::walk_layers(layers.to_vec(), arch)?)?;
    let found = images::discover_files(&scan.sources)?;
    let count = found.len();
    let mut records = Vec::new();
    // The tags of registry/ that a reference of the rootfs names.
    let mut named = std::collections::BTreeSet::new();
    // Kept as found, canonical text: a large tree names tens of thousands of images, and
    // this list lives while the payload is packed.
    let mut missing = Vec::with_capacity(count);
    for (text, places) in found {
        let reference = Reference::parse(&text).map_err(PullError::from)?;
        if let Some(tag) = reference.tag() {
            named.insert((reference.repository().to_string(), tag.to_string()));
        }
        match scan.stored.resolve(&reference) {
            Some(digest) => records.push(scan.stored.record(&text, reference.repository(), &digest)?),
            None => missing.push((text, places)),
        }
    }
    for (repository, tag, digest) in scan.stored.tags() {
        if !named.contains(&(repository.clone(), tag.clone())) {
            records.push(scan.stored.record(&format!("{repository}:{tag}"), &repository, &digest)?);
        }
    }
    Ok(FoundImages { named: count, records, missing })
}

/// Gets the images `found` misses: an error, or left out with a warning when the build must
/// not pull; else pulled into `OUT/.kubeferry-images-ARCH/`, which is added to `layers` as the
/// last one, at `registry/` (and removed when the build ends). Returns every image the bundle's
/// registry/ will hold, for the manifest.
fn collect_images(
    args: &BuildArgs,
    arch: Arch,
    found: FoundImages,
    layers: &mut Vec<collect::Layer>,
    cleanup: &mut Unpacked,
    counters: &mut Counters,
    term: &Terminal,
) -> Result<Vec<ImageRecord>, Error> {
    let FoundImages { named, mut records, missing } = found;
    if named > 0 {
        term.say(&format!(
            "{arch}: the rootfs names {named} images, {} of them in its registry/",
            named - missing.len()
        ));
    }
    if !missing.is_empty() && args.no_pull {
        if !args.allow_missing_images {
            return Err(Error::MissingImages { arch, missing });
        }
        for (reference, places) in missing.iter().take(error::MISSING_SHOWN) {
            term.warn(&format!(
                "'{reference}' (named in {}) is not in registry/ and is left out of the {arch} bundle",
                places.join("; ")
            ));
        }
        if missing.len() > error::MISSING_SHOWN {
            term.warn(&format!(
                "{} images are left out of the {arch} bundle: the {} above {}",
                missing.len(),
                error::MISSING_SHOWN,
                error::more_missing(missing.len() - error::MISSING_SHOWN)
            ));
        }
    } else if !missing.is_empty() {
        let dir = args.out.join(format!(".kubeferry-images-{arch}"));
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove", &dir)(e)),
            _ => {}
        }
        cleanup.push(dir.clone());
        let options = args.registries.options(vec![Platform::linux(arch.name())], args.pull_jobs)?;
        let puller = Puller::new(options)?;
        let references = missing
            .iter()
            .map(|(text, _)| Reference::parse(text).map_err(PullError::from))
            .collect::<Result<Vec<_>, _>>()?;
        term.say(&format!("pulling {} images for {arch}", references.len()));
        let start = std::time::Instant::now();
        let pulled = puller.pull(&references, &dir, term).map_err(|e| {
            let named_in = e
                .reference()
                .and_then(|r| missing.iter().find(|(m, _)| m == r))
                .map(|(r, places)| (r.clone(), places.join("; ")));
            match named_in {
                Some((reference, named_in)) => Error::ImagePull { reference, named_in, source: Box::new(e) },
                None => Error::from(e),
            }
        })?;
        let c = puller.counters();
        term.say(&format!(
            "pulled {} images for {arch} in {:.1}s: {}",
            pulled.len(),
            start.elapsed().as_secs_f64(),
            describe_counters(&c)
        ));
        counters.manifests_fetched += c.manifests_fetched;
        counters.blobs_fetched += c.blobs_fetched;
        counters.bytes_fetched += c.bytes_fetched;
        counters.cache_hits += c.cache_hits;
        counters.retries += c.retries;
        for image in pulled {
            let digest = Digest::parse(&image.digest)
                .ok_or_else(|| PullError::Option(format!("'{}' is not a sha256 digest", image.digest)))?;
            records.push(ImageRecord {
                name: image.reference.to_string(),
                repository: image.reference.repository().to_string(),
                digest,
                platforms: image.platforms.iter().map(ToString::to_string).collect(),
                size: image.size,
            });
        }
        layers.push(collect::Layer { source: dir, at: "registry".into() });
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

/// Directories a FROM bundle was unpacked into, removed when the build ends.
struct Unpacked(Vec<PathBuf>);

impl Unpacked {
    fn push(&mut self, dir: PathBuf) {
        self.0.push(dir);
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Where the base of a build for `arch` is unpacked or flattened.
fn base_dir(out: &Path, arch: Arch) -> PathBuf {
    out.join(format!(".kubeferry-base-{arch}"))
}

/// Pulls a FROM image for `arch` and flattens it into `dir`, fresh. Returns what its config
/// says of the image.
fn pull_base(
    reference: &kubeferry_builder::reference::Reference,
    arch: Arch,
    options: &kubeferry_builder::pull::PullOptions,
    dir: &Path,
    term: &Terminal,
) -> Result<(PathBuf, ImageConfig), Error> {
    let _ = std::fs::remove_dir_all(dir);
    term.say(&format!("pulling the base image '{reference}' for {arch}"));
    let scratch = dir.with_extension("pull");
    let flattened = base::pull_and_flatten(reference, arch, options, dir, &scratch, term)
        .map_err(|e| Error::Base { reference: reference.to_string(), arch, source: Box::new(e) })?;
    term.say(&format!("flattened {} layers of '{reference}' ({})", flattened.layers, flattened.digest));
    Ok((flattened.dir, flattened.image))
}

/// `build --from IMAGE...`: every image flattened, in order, into `dir`; ENV and LABELs
/// merged (later images win), the CMDs and ENTRYPOINTs of all run in the images' order.
fn from_images(
    images: &[String],
    arch: Arch,
    options: &kubeferry_builder::pull::PullOptions,
    dir: &Path,
    term: &Terminal,
) -> Result<ImageConfig, Error> {
    let _ = std::fs::remove_dir_all(dir);
    let mut image = ImageConfig::default();
    for name in images {
        let reference = kubeferry_builder::reference::Reference::parse(name)
            .map_err(kubeferry_builder::pull::PullError::from)?;
        term.say(&format!("pulling '{reference}' for {arch}"));
        let scratch = dir.with_extension("pull");
        let flattened = base::pull_and_flatten(&reference, arch, options, dir, &scratch, term)
            .map_err(|e| Error::Base { reference: reference.to_string(), arch, source: Box::new(e) })?;
        let next = flattened.image;
        image.env.extend(next.env);
        image.labels.extend(next.labels);
        for (all, more) in [(&mut image.cmd, next.cmd), (&mut image.entrypoint, next.entrypoint)] {
            if let Some(more) = more {
                all.get_or_insert_with(Vec::new).extend(more);
            }
        }
    }
    Ok(image)
}

/// Imports the image archives of the `images/` (and `ARCH/images/`) of every layer placed at
/// the root into `registry`; gives the archives imported.
fn import_archives(
    layers: &[collect::Layer],
    arch: Arch,
    registry: &Path,
    term: &Terminal,
) -> Result<HashSet<PathBuf>, Error> {
    let _ = std::fs::remove_dir_all(registry);
    let mut archives = HashSet::new();
    for layer in layers {
        let dirs = match layer.at.as_str() {
            "" => vec![layer.source.join("images"), layer.source.join(arch.name()).join("images")],
            "images" => vec![layer.source.clone()],
            _ => Vec::new(),
        };
        for images in dirs {
            let imported = archive::import_archives(&images, registry, arch, term)?;
            for image in &imported {
                term.say(&format!(
                    "imported {} ({}) from '{}'",
                    image.reference,
                    image.digest,
                    image.archive.display()
                ));
            }
            archives.extend(imported.into_iter().map(|image| image.archive));
        }
    }
    Ok(archives)
}

/// Checks a FROM bundle against the trusted keys and unpacks it beside the output, for the
/// architecture being built. Returns the directory and what its manifest says of the image.
fn unpack_base(
    path: &Path,
    arch: Arch,
    trust: &Trust,
    out: &Path,
    term: &Terminal,
) -> Result<(PathBuf, ImageConfig), String> {
    let fail =
        |e: kubeferry_installer::Error| format!("the base bundle '{}': {}", path.display(), error_chain(&e));
    let bundle = Bundle::open(path).map_err(fail)?;
    let verified = bundle
        .authenticate(trust)
        .map_err(|e| format!("{}; pass --trusted-key with the public key that signed it", fail(e)))?;
    if verified.manifest.arch != arch {
        return Err(format!(
            "the base bundle '{}' is for {}, not {arch}; name the file with ${{ARCH}} to build several architectures",
            path.display(),
            verified.manifest.arch
        ));
    }
    let dir = out.join(format!(".kubeferry-base-{arch}"));
    let options = ExtractOptions { replace: true, ..ExtractOptions::default() };
    term.say(&format!("unpacking the base bundle '{}'", path.display()));
    extract::extract(&bundle, &verified, &dir, &options, term).map_err(fail)?;
    Ok((dir, verified.manifest.image))
}

fn sign_file(key: &Path, force: bool, file: &Path, term: &Terminal) -> Result<(), Error> {
    let key = SecretKey::read(key)?;
    let packed = sign::sign(file, &key, force, term)?;
    term.say(&format!("signed '{}' with {}", packed.path.display(), key.public_key().fingerprint()));
    println!("{}", packed.path.display());
    Ok(())
}

fn inspect(file: &Path, json: bool) -> Result<(), Error> {
    let bundle = Bundle::open(file)?;
    let manifest = bundle.manifest_unverified()?;
    let size = bundle.trailer().file_len;
    let mut out = std::io::stdout().lock();
    let head = if json {
        let t = bundle.trailer();
        let value = serde_json::json!({
            "file": file,
            "size": size,
            "verified": false,
            "signed": bundle.signature().is_some(),
            "signature_key": bundle.signature().map(|s| s.fingerprint().to_string()),
            "trailer": {
                "format_version": t.version,
                "stub": [0, t.stub_len],
                "payload": [t.payload_offset, t.payload_len],
                "index": [t.index_offset, t.index_len],
                "manifest": [t.manifest_offset, t.manifest_len],
                "signature": [t.signature_offset, t.signature_len],
            },
            "manifest": manifest,
        });
        // The entries follow as the index is read, so the object is closed after them.
        let text = format!("{value:#}");
        format!("{},\n  \"entries\": ", text.strip_suffix("\n}").unwrap_or(&text))
    } else {
        format!("{}\n", render_summary(file, size, &manifest, false))
    };
    if let Err(e) = out.write_all(head.as_bytes()) {
        return quiet_on_broken_pipe(e);
    }
    write_entries(&mut out, bundle.entries(&manifest), json)?;
    if json && let Err(e) = out.write_all(b"}\n") {
        return quiet_on_broken_pipe(e);
    }
    Ok(())
}

/// A reader that stops reading (`| head`) ends the output quietly.
fn quiet_on_broken_pipe(e: std::io::Error) -> Result<(), Error> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(Error::io("write", "standard output")(e))
    }
}

fn images(rootfs: &Path, json: bool) -> Result<(), Error> {
    let found = kubeferry_builder::images::discover(rootfs)?;
    let text = if json {
        format!("{:#}\n", serde_json::json!(found))
    } else {
        let width = found.keys().map(String::len).max().unwrap_or(0);
        found.iter().map(|(reference, whys)| format!("{reference:<width$}  {}\n", whys.join("; "))).collect()
    };
    std::io::stdout().lock().write_all(text.as_bytes()).or_else(quiet_on_broken_pipe)
}

fn verify(
    keys: &[PathBuf],
    fingerprints: &[String],
    file: &Path,
    json: bool,
    term: &Terminal,
) -> Result<(), Error> {
    let trust = Trust::from_sources(keys, fingerprints, false, false)?;
    let bundle = Bundle::open(file)?;
    let verified = bundle.authenticate(&trust)?;
    let options =
        StreamOptions { cancel: Some(kubeferry_term::cancel_on_signal()), ..StreamOptions::default() };
    extract::verify(&bundle, &verified, &options, term)?;
    let minisig_path = sidecar(file, "minisig");
    let minisig = if minisig_path.exists() {
        let text = std::fs::read_to_string(&minisig_path).map_err(Error::io("read", &minisig_path))?;
        let digest = FileDigest::of_file(file)?;
        // The authenticated manifest names the key id the minisign signature must carry.
        let key_id = verified.manifest.signer.as_ref().and_then(|s| PublicKey::parse_key_id_hex(&s.key_id));
        let (Some(section), Some(key_id)) = (bundle.signature(), key_id) else {
            return Err(kubeferry_installer::Error::Unsigned.into());
        };
        let key = PublicKey::from_parts(key_id, section.public_key)?;
        key.verify_minisig(&digest, &text)?;
        "verified"
    } else {
        "absent"
    };
    let m = &verified.manifest;
    let signer = m.signer.as_ref().map(|s| s.fingerprint.clone()).unwrap_or_default();
    if json {
        println!(
            "{:#}",
            serde_json::json!({
                "file": file, "verified": true, "signer": signer, "name": m.name, "version": m.version,
                "arch": m.arch, "size": bundle.trailer().file_len, "unpacked_size": m.payload.unpacked_size,
                "entries": m.index.entries, "minisig": minisig,
            })
        );
    } else {
        term.say(&format!(
            "verified '{}': {} {} for {}, signed by {signer}, {} entries; minisig {minisig}",
            file.display(),
            m.name,
            m.version,
            m.arch,
            m.index.entries
        ));
    }
    Ok(())
}

fn pull(args: &PullArgs, term: &Terminal) -> Result<(), Error> {
    let references = args
        .references
        .iter()
        .map(|r| Reference::parse(r).map_err(PullError::from))
        .collect::<Result<Vec<_>, _>>()?;
    let platforms = args
        .arch
        .iter()
        .map(|a| a.parse().map_err(PullError::Option))
        .collect::<Result<Vec<_>, PullError>>()?;
    let options =
        PullOptions { all_platforms: args.all_platforms, ..args.registries.options(platforms, args.jobs)? };
    let puller = Puller::new(options)?;
    let start = std::time::Instant::now();
    let pulled = puller.pull(&references, &args.out, term)?;
    let c = puller.counters();
    term.say(&format!(
        "pulled {} images into '{}' in {:.1}s: {}",
        pulled.len(),
        args.out.display(),
        start.elapsed().as_secs_f64(),
        describe_counters(&c)
    ));
    if args.json {
        println!("{:#}", serde_json::json!({"images": pulled, "counters": c}));
    } else {
        for image in &pulled {
            let platforms: Vec<String> = image.platforms.iter().map(ToString::to_string).collect();
            println!("{}\t{}\t{}\t{}", image.reference, image.digest, platforms.join(","), image.size);
        }
    }
    Ok(())
}

fn describe_counters(c: &Counters) -> String {
    format!(
        "{} blobs and {} manifests fetched ({}), {} from the cache",
        c.blobs_fetched,
        c.manifests_fetched,
        human_bytes(c.bytes_fetched),
        c.cache_hits
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
