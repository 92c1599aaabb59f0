//! Pulls container images from registries into a registry storage directory.
//!
//! 1. **Resolve** ([`Puller::pull`]): each reference, deduplicated, is asked of its registry
//!    (through [`client`]: mirrors, plain HTTP for loopback and insecure hosts, authentication,
//!    retries); the manifest's sha256 is checked against the digest asked for or announced;
//!    an index is narrowed to the platforms wanted ([`manifest::select`]), or kept whole.
//! 2. **Fetch**: the blobs every image needs, deduplicated across images and platforms, come
//!    from the [`cache`] or are downloaded into it by a small pool of threads, each verified
//!    against its digest and size while it streams.
//! 3. **Store** ([`store`]): manifests and blobs are written in the docker distribution
//!    layout under each image's original repository name, blobs first, links last.
//!
//! A tag reference pulled for one platform is stored as that platform's image manifest; a
//! reference pulled for several platforms, for all of them, or by the digest of an index
//! keeps the index (with only the children pulled, unless all are).

pub mod auth;
pub mod cache;
pub mod client;
pub mod error;
pub mod manifest;
pub mod store;

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kubeferry_installer::progress::Reporter;
use sha2::{Digest as _, Sha256};

pub use self::auth::{Credential, Credentials};
pub use self::cache::BlobCache;
pub use self::client::{Client, ClientOptions, Endpoint, Mirror};
pub use self::error::PullError;
pub use self::manifest::Platform;
use self::manifest::{Descriptor, MAX_MANIFEST_BYTES, Parsed};
use self::store::Store;
use crate::reference::Reference;

/// Download threads when [`PullOptions::jobs`] is 0.
pub const DEFAULT_JOBS: usize = 4;

/// What to pull and how.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platforms wanted from an index (`linux/amd64`...).
    pub platforms: Vec<Platform>,
    /// Keep every platform of an index.
    pub all_platforms: bool,
    /// The blob cache; `None` for [`cache::default_dir`].
    pub cache_dir: Option<PathBuf>,
    /// The docker configuration file; `None` for `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Credentials by registry host, before those of the docker configuration.
    pub registry_auth: Vec<(String, Credential)>,
    /// Mirrors and rewrites.
    pub mirrors: Vec<Mirror>,
    /// Registries spoken to over plain HTTP (loopback ones always are).
    pub insecure: Vec<String>,
    /// Download threads; 0 means [`DEFAULT_JOBS`].
    pub jobs: usize,
    /// Attempts per request.
    pub attempts: u32,
    /// The first retry's wait, doubled at each further one.
    pub backoff: Duration,
    /// Connect and read timeout.
    pub timeout: Duration,
    /// Set (by a signal handler) to stop: downloads end at their next chunk, nothing more is
    /// linked, and the pull fails with [`PullError::Interrupted`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platforms: vec![Platform::linux("amd64")],
            all_platforms: false,
            cache_dir: None,
            docker_config: None,
            registry_auth: Vec::new(),
            mirrors: Vec::new(),
            insecure: Vec::new(),
            jobs: 0,
            attempts: 4,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(60),
            cancel: None,
        }
    }
}

/// One image pulled and stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PulledImage {
    /// The reference, normalised.
    pub reference: Reference,
    /// The digest of the manifest the reference points at in the store.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// The platforms stored.
    pub platforms: Vec<Platform>,
    /// Bytes of every manifest and blob of the image (each counted once).
    pub size: u64,
}

/// Counters of a puller's work, for tests and reports.
#[derive(Debug, Default)]
pub struct Stats {
    manifests_fetched: AtomicU64,
    blobs_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    cache_hits: AtomicU64,
    retries: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Manifests downloaded.
    pub manifests_fetched: u64,
    /// Blobs downloaded.
    pub blobs_fetched: u64,
    /// Bytes downloaded (manifests and blobs).
    pub bytes_fetched: u64,
    /// Blobs and manifests found in the cache.
    pub cache_hits: u64,
    /// Requests or transfers tried again.
    pub retries: u64,
}

impl Stats {
    fn count_fetch(&self, bytes: u64) {
        self.blobs_fetched.fetch_add(1, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
    }
    fn count_manifest(&self, bytes: u64) {
        self.manifests_fetched.fetch_add(1, Ordering::Relaxed);
        self.bytes_fetched.fetch_add(bytes, Ordering::Relaxed);
    }
    fn count_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }
    fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    /// The counters now.
    pub fn snapshot(&self) -> Counters {
        Counters {
            manifests_fetched: self.manifests_fetched.load(Ordering::Relaxed),
            blobs_fetched: self.blobs_fetched.load(Ordering::Relaxed),
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// A manifest fetched and verified.
#[derive(Debug, Clone)]
struct Fetched {
    digest: String,
    media_type: String,
    parsed: Parsed,
    size: u64,
}

/// An image's part of a fetch: the blobs it is the first to need.
struct Part {
    total: u64,
    left: AtomicUsize,
    started: AtomicBool,
}

/// What one reference needs, resolved.
#[derive(Debug)]
struct Plan {
    reference: Reference,
    endpoint: Endpoint,
    /// The manifest the tag or reference points at.
    target: String,
    media_type: String,
    /// Every manifest to store (the index first, when kept).
    manifests: Vec<(String, u64)>,
    /// Configs and layers.
    blobs: Vec<Descriptor>,
    platforms: Vec<Platform>,
}

/// Pulls images; keeps its client (and the tokens it got) and its counters across pulls.
#[derive(Debug)]
pub struct Puller {
    client: Client,
    cache: BlobCache,
    options: PullOptions,
    stats: Stats,
}

impl Puller {
    /// A puller with these options; opens (creates) the cache and reads the credentials.
    pub fn new(options: PullOptions) -> Result<Puller, PullError> {
        if options.platforms.is_empty() && !options.all_platforms {
            return Err(PullError::Option("no platform to pull was given".into()));
        }
        let credentials = Credentials::load(&options.registry_auth, options.docker_config.as_deref())?;
        let dir = match &options.cache_dir {
            Some(dir) => dir.clone(),
            None => cache::default_dir().ok_or_else(|| {
                PullError::Option("no cache directory: HOME and XDG_CACHE_HOME are unset; pass one".into())
            })?,
        };
        let cache = BlobCache::open(&dir)?;
        let client = Client::new(ClientOptions {
            credentials,
            mirrors: options.mirrors.clone(),
            insecure: options.insecure.clone(),
            attempts: options.attempts.max(1),
            backoff: options.backoff,
            timeout: options.timeout,
        });
        Ok(Puller { client, cache, options, stats: Stats::default() })
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.stats.snapshot()
    }

    /// The cache.
    pub fn cache(&self) -> &BlobCache {
        &self.cache
    }

    /// Pulls `references` into the registry storage under `out` (the directory that holds
    /// `docker/registry/v2`). Nothing is linked into `out` unless every image was fetched.
    pub fn pull(
        &self,
        references: &[Reference],
        out: &Path,
        reporter: &dyn Reporter,
    ) -> Result<Vec<PulledImage>, PullError> {
        let mut references = references.to_vec();
        references.sort();
        references.dedup();
        reporter.begin(&format!("resolving {} images", references.len()), 0);
        let plans = self.resolve_all(&references);
        reporter.end();
        let plans = plans?;
        // Every blob once, with an image that can fetch it.
        let mut wanted: BTreeMap<String, (u64, usize)> = BTreeMap::new();
        for (i, plan) in plans.iter().enumerate() {
            for blob in &plan.blobs {
                wanted.entry(blob.digest.clone()).or_insert((blob.size, i));
            }
        }
        let total: u64 = wanted.values().map(|(size, _)| size).sum();
        reporter.begin(&format!("fetching {} blobs of {} images", wanted.len(), plans.len()), total);
        let fetched = self.fetch_all(&plans, wanted, reporter);
        reporter.end();
        let blobs = fetched?;
        self.check_cancel()?;
        let store = Store::new(out);
        reporter.begin(&format!("storing {} images", plans.len()), 0);
        let mut pulled = Vec::new();
        for plan in &plans {
            let image = self.store(&store, plan, &blobs)?;
            let wanted = &self.options.platforms;
            if !self.options.all_platforms
                && !image.platforms.is_empty()
                && !image.platforms.iter().any(|p| wanted.iter().any(|w| w.matches(p)))
            {
                let wanted: Vec<String> = wanted.iter().map(ToString::to_string).collect();
                let has: Vec<String> = image.platforms.iter().map(ToString::to_string).collect();
                reporter.warn(&format!(
                    "'{}' is a single-platform image for {}, not {}: it was pulled as it is",
                    image.reference,
                    has.join(", "),
                    wanted.join(", ")
                ));
            }
            pulled.push(image);
        }
        reporter.end();
        Ok(pulled)
    }

    fn cancelled(&self) -> bool {
        self.options.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn check_cancel(&self) -> Result<(), PullError> {
        if self.cancelled() { Err(PullError::Interrupted) } else { Ok(()) }
    }

    fn jobs(&self) -> usize {
        if self.options.jobs == 0 { DEFAULT_JOBS } else { self.options.jobs }
    }

    /// Resolves every reference, `jobs` at a time, in order; the first error (in the order of
    /// the references) is returned.
    fn resolve_all(&self, references: &[Reference]) -> Result<Vec<Plan>, PullError> {
        let next = AtomicU64::new(0);
        let results: Mutex<Vec<Option<Result<Plan, PullError>>>> =
            Mutex::new(references.iter().map(|_| None).collect());
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..self.jobs().min(references.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= references.len() || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let result = if self.cancelled() {
                            Err(PullError::Interrupted)
                        } else {
                            self.resolve(&references[i])
                        };
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        results.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(result);
                    }
                });
            }
        });
        let results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
        if results.iter().all(|r| matches!(r, Some(Ok(_)))) {
            return Ok(results.into_iter().flatten().flatten().collect());
        }
        // The first error in the order of the references; a reference left unresolved was
        // skipped because another failed.
        Err(results.into_iter().flatten().find_map(Result::err).unwrap_or(PullError::Interrupted))
    }

    /// Resolves a reference to the manifests and blobs it needs.
    fn resolve(&self, reference: &Reference) -> Result<Plan, PullError> {
        let endpoint = self.client.endpoint(reference);
        let top = self.manifest(reference, &endpoint, reference.object(), reference.digest())?;
        let mut plan = Plan {
            reference: reference.clone(),
            endpoint,
            target: top.digest.clone(),
            media_type: top.media_type.clone(),
            manifests: vec![(top.digest.clone(), top.size)],
            blobs: Vec::new(),
            platforms: Vec::new(),
        };
        match &top.parsed {
            Parsed::Image { config, layers } => {
                plan.blobs.push(config.clone());
                plan.blobs.extend(layers.iter().cloned());
            }
            Parsed::Index { manifests } => {
                let children: Vec<&Descriptor> = if self.options.all_platforms {
                    manifests.iter().collect()
                } else {
                    let mut chosen: Vec<&Descriptor> = Vec::new();
                    for wanted in &self.options.platforms {
                        let child =
                            manifest::select(manifests, wanted).ok_or_else(|| PullError::NoPlatform {
                                reference: reference.to_string(),
                                wanted: wanted.to_string(),
                                available: manifest::available(manifests),
                            })?;
                        if !chosen.iter().any(|c| c.digest == child.digest) {
                            chosen.push(child);
                        }
                    }
                    chosen
                };
                // One platform of a tag: the platform's own manifest is what the tag names.
                if children.len() == 1 && reference.digest().is_none() && !self.options.all_platforms {
                    plan.manifests.clear();
                }
                for child in children {
                    let fetched =
                        self.manifest(reference, &plan.endpoint, &child.digest, Some(&child.digest))?;
                    let Parsed::Image { config, layers } = &fetched.parsed else {
                        return Err(PullError::BadManifest {
                            reference: reference.to_string(),
                            digest: child.digest.clone(),
                            reason: "an index inside an index is not supported".into(),
                        });
                    };
                    if plan.manifests.is_empty() {
                        plan.target = fetched.digest.clone();
                        plan.media_type = fetched.media_type.clone();
                    }
                    plan.manifests.push((fetched.digest.clone(), fetched.size));
                    plan.blobs.push(config.clone());
                    plan.blobs.extend(layers.iter().cloned());
                    plan.platforms.extend(child.platform.clone());
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        plan.blobs.retain(|b| seen.insert(b.digest.clone()));
        Ok(plan)
    }

    /// A manifest by tag or digest, verified: against `digest` when the caller knows it, and
    /// against the registry's `Docker-Content-Digest` when it sends one. By digest, the
    /// cache answers first.
    fn manifest(
        &self,
        reference: &Reference,
        endpoint: &Endpoint,
        object: &str,
        digest: Option<&str>,
    ) -> Result<Fetched, PullError> {
        let parse = |bytes: &[u8], digest: &str, content_type: Option<&str>| {
            manifest::parse(bytes, content_type)
                .map(|(media_type, parsed)| Fetched {
                    digest: digest.to_owned(),
                    media_type,
                    parsed,
                    size: bytes.len() as u64,
                })
                .map_err(|reason| PullError::BadManifest {
                    reference: reference.to_string(),
                    digest: digest.to_owned(),
                    reason,
                })
        };
        if let Some(digest) = digest
            && self.cache.contains(digest, None)
        {
            let path = self.cache.path(digest);
            let bytes = fs_err::read(&path).map_err(PullError::io("read", &path))?;
            self.stats.count_hit();
            return parse(&bytes, digest, None);
        }
        let response =
            self.client.get(reference, endpoint, "manifests", object, manifest::ACCEPT, &self.stats)?;
        let mut bytes = Vec::new();
        response.body.into_reader().take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(
            |source| PullError::Transfer {
                reference: reference.to_string(),
                registry: endpoint.host.clone(),
                what: "manifest",
                digest: object.to_owned(),
                source,
            },
        )?;
        self.stats.count_manifest(bytes.len() as u64);
        let found = format!("sha256:{:x}", Sha256::digest(&bytes));
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(PullError::BadManifest {
                reference: reference.to_string(),
                digest: found,
                reason: format!("it is larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        for expected in [digest, response.digest.as_deref()].into_iter().flatten() {
            if expected != found {
                return Err(PullError::DigestMismatch {
                    reference: reference.to_string(),
                    what: "manifest",
                    expected: expected.to_owned(),
                    found,
                });
            }
        }
        let fetched = parse(&bytes, &found, response.content_type.as_deref())?;
        self.cache.insert(&found, &bytes)?;
        Ok(fetched)
    }

    /// Fetches every blob into the cache with a bounded pool of threads; the first error
    /// stops the others.
    fn fetch_all(
        &self,
        plans: &[Plan],
        wanted: BTreeMap<String, (u64, usize)>,
        reporter: &dyn Reporter,
    ) -> Result<BTreeMap<String, PathBuf>, PullError> {
        let jobs = self.jobs();
        // Image by image, so that a few images are under way at a time, each with its part of
        // the progress: the blobs it is the first to need.
        let mut queue: Vec<(String, u64, usize)> =
            wanted.into_iter().map(|(d, (size, i))| (d, size, i)).collect();
        queue.sort_by_key(|(_, _, i)| *i);
        let parts: Vec<Part> = plans
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let mine = queue.iter().filter(|(_, _, image)| *image == i);
                Part {
                    total: mine.clone().map(|(_, size, _)| size).sum(),
                    left: AtomicUsize::new(mine.count()),
                    started: AtomicBool::new(false),
                }
            })
            .collect();
        let queue: Mutex<VecDeque<(String, u64, usize)>> = Mutex::new(queue.into());
        let done: Mutex<BTreeMap<String, PathBuf>> = Mutex::default();
        let failed: Mutex<Option<PullError>> = Mutex::default();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
                        let Some((digest, size, i)) = next else { break };
                        let plan = &plans[i];
                        let part = &parts[i];
                        if !part.started.swap(true, Ordering::Relaxed) {
                            reporter.part_begin(i, &plan.reference.to_string(), part.total);
                        }
                        let progress = |n: u64| {
                            reporter.advance(n);
                            reporter.part_advance(i, n);
                        };
                        let fetched = if self.cancelled() {
                            Err(PullError::Interrupted)
                        } else {
                            self.cache.fetch(
                                &self.client,
                                &plan.reference,
                                &plan.endpoint,
                                &digest,
                                size,
                                &self.stats,
                                &progress,
                                self.options.cancel.as_deref(),
                            )
                        };
                        match fetched {
                            Ok(path) => {
                                done.lock().unwrap_or_else(PoisonError::into_inner).insert(digest, path);
                                if part.left.fetch_sub(1, Ordering::Relaxed) == 1 {
                                    reporter.part_end(i);
                                }
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
            return Err(e);
        }
        Ok(done.into_inner().unwrap_or_else(PoisonError::into_inner))
    }

    /// Writes one image: blobs, then manifests, then links, then the tag.
    fn store(
        &self,
        store: &Store,
        plan: &Plan,
        blobs: &BTreeMap<String, PathBuf>,
    ) -> Result<PulledImage, PullError> {
        let name = plan.reference.repository();
        let mut size = 0;
        for blob in &plan.blobs {
            let from = blobs.get(&blob.digest).cloned().unwrap_or_else(|| self.cache.path(&blob.digest));
            store.put_blob(&blob.digest, &from)?;
            size += blob.size;
        }
        for (digest, len) in &plan.manifests {
            store.put_blob(digest, &self.cache.path(digest))?;
            size += len;
        }
        for blob in &plan.blobs {
            store.link_layer(name, &blob.digest)?;
        }
        for (digest, _) in &plan.manifests {
            store.link_revision(name, digest)?;
        }
        if let Some(tag) = plan.reference.tag() {
            store.tag(name, tag, &plan.target)?;
        }
        let mut platforms = plan.platforms.clone();
        if platforms.is_empty()
            && let Some(config) = plan.blobs.first()
        {
            platforms.extend(config_platform(&self.cache.path(&config.digest)));
        }
        Ok(PulledImage {
            reference: plan.reference.clone(),
            digest: plan.target.clone(),
            media_type: plan.media_type.clone(),
            platforms,
            size,
        })
    }
}

/// The platform an image config names (`os`, `architecture`, `variant`).
fn config_platform(path: &Path) -> Option<Platform> {
    let bytes = std::fs::read(path).ok()?;
    let platform: Platform = serde_json::from_slice(&bytes).ok()?;
    (!platform.architecture.is_empty()).then_some(platform)
}
