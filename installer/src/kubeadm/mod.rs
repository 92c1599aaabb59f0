//! kubeadm configuration for installing and joining: render the image's `etc/kubeadm.yml`,
//! merge the user's `--config` over it, and spell out the join commands.
//!
//! # Pipeline
//!
//! ```text
//! etc/kubeadm.yml.tmpl, else etc/kubeadm.yml, else default_config()
//!   │ render(text, &values)      expand the template, then write the installer's facts
//!   ▼
//! merge(rendered, user_config)   the user's --config, document by document, field by field
//!   │
//!   ├─ init_config(merged)                  → kubeadm init --config
//!   └─ join_config(merged, &values, &join, control_plane)
//!                                           → kubeadm join --config (on the joining host)
//! ```
//!
//! # Precedence, lowest first
//!
//! 1. kubeadm's own defaults, for every field nobody sets.
//! 2. The image: its `etc/kubeadm.yml` after template expansion, or [`default_config`] when it
//!    ships none. An image's file replaces the default file whole, as sealer documents it ("Sealer
//!    will replace the default configuration with a custom configuration file"); the two are not
//!    layered.
//! 3. The installer's facts, from [`Values`], in three sorts:
//!    - *host identity*, which no image can know, always replaces what the image wrote (sealer and
//!      sealos do the same; sealer's own basefs template hard-codes the address of the machine it
//!      was made on): `InitConfiguration.localAPIEndpoint.advertiseAddress`, and in the
//!      `nodeRegistration` of both `InitConfiguration` and `JoinConfiguration`: `name` (when
//!      [`Values::node_name`] is known) and the kubelet's `node-ip` extra argument; plus
//!      `JoinConfiguration.controlPlane.localAPIEndpoint.advertiseAddress` when the image has a
//!      `controlPlane` section;
//!    - *runtime facts* fill only what the image left unset (absent, `null` or `""`):
//!      `nodeRegistration.criSocket`, `ClusterConfiguration.kubernetesVersion`, `.imageRepository`
//!      (the bundled registry), `.controlPlaneEndpoint`, `KubeletConfiguration.cgroupDriver`;
//!    - *adjustments*: `apiServer.timeoutForControlPlane` is raised to at least
//!      [`Values::control_plane_timeout`] (kubeadm 1.20 under emulation needs ~20 minutes),
//!      `apiServer.certSANs` gains [`Values::extra_cert_sans`], and `nodeRegistration.taints`
//!      becomes `[]` when the image left it unset and [`Values::workloads_on_control_plane`].
//!
//!    A document the image lacks (`InitConfiguration`, `ClusterConfiguration`,
//!    `KubeletConfiguration`) is created for these facts.
//! 4. The user's `--config` ([`merge`]), which overrides everything, the installer's facts too,
//!    field by field: an `advertiseAddress` there changes that field only, not the kubelet's
//!    `node-ip`; the host's address is `--advertise-address` ([`Values::advertise_address`]).
//!
//! # Template syntax
//!
//! Sealer and sealos render only files named `*.tmpl` (`etc/kubeadm.yml.tmpl` becomes
//! `etc/kubeadm.yml`); both use Go's `text/template` over the map of environment variables
//! (sealer: `pkg/env/env.go`; sealos: `lifecycle/pkg/template`, with sprig's functions). Real
//! images write `{{or .RegistryURL "sea.hub:5000"}}` (sealer's basefs `kubeadm.yml.tmpl`),
//! `{{ .registryDomain }}:{{ .registryPort }}` and
//! `{{ if and (ne .X "") (ge .X "126") }}…{{ else }}…{{ end }}` (sealos cluster images), and
//! `semverCompare` (sealos documentation). `${VAR}` and `$(VAR)` are not template syntax there:
//! they are shell and Kubefile `CMD` expansion. A plain `etc/kubeadm.yml` has no variables, and
//! expanding it changes nothing.
//!
//! [`render`] implements that subset of Go templates: `{{ .NAME }}`, string, integer and boolean
//! literals, parentheses, pipelines (`{{ .X | default "y" }}`), `{{- ` and ` -}}` trimming,
//! `{{/* comments */}}`, `if` / `else if` / `else` / `end`, and the functions listed in
//! [`TEMPLATE_FUNCTIONS`]. Anything else (`range`, `with`, `define`, variables, other functions)
//! is refused with its line. Unlike Go, which prints `<no value>`, a variable that is not defined
//! is an error naming its line, except where emptiness is the question: as an argument of `or`,
//! `and`, `not`, `default`, `empty`, and as an `if` condition.
//!
//! # Output
//!
//! Rendered and merged configurations are printed by this module's own YAML writer:
//! deterministic, block style, two-space indents, comments dropped, and every string that a
//! YAML 1.1 reader (kubeadm's) could take for something else (`yes`, `on`, `0755`, `1e3`,
//! `2001-01-01`, an IP address) quoted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use serde::Deserialize as _;
use serde_yaml_ng::{Mapping, Value};

/// The API group of `InitConfiguration`, `ClusterConfiguration` and `JoinConfiguration`.
pub const KUBEADM_GROUP: &str = "kubeadm.k8s.io";
/// The API group of `KubeletConfiguration`.
pub const KUBELET_GROUP: &str = "kubelet.config.k8s.io";
/// The API group of `KubeProxyConfiguration`.
pub const KUBE_PROXY_GROUP: &str = "kubeproxy.config.k8s.io";
/// The kubeadm API version of Kubernetes 1.15 to 1.21, and so of kubeadm 1.20.
pub const KUBEADM_API_VERSION: &str = "kubeadm.k8s.io/v1beta2";
/// The `KubeletConfiguration` API version.
pub const KUBELET_API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
/// The `KubeProxyConfiguration` API version.
pub const KUBE_PROXY_API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// containerd's CRI socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The bundled registry's name, as sealer names it.
pub const DEFAULT_REGISTRY_DOMAIN: &str = "sea.hub";
/// The bundled registry's port.
pub const DEFAULT_REGISTRY_PORT: u16 = 5000;
/// The API server's port when the configuration does not say.
pub const DEFAULT_API_SERVER_PORT: u16 = 6443;
/// How long kubeadm waits for the control plane: 20 minutes worked for kubeadm 1.20 under qemu
/// TCG emulation, where the default 4 minutes does not.
pub const DEFAULT_CONTROL_PLANE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The template functions [`render`] knows. Go's and sprig's others are refused.
pub const TEMPLATE_FUNCTIONS: &[&str] = &[
    "and",
    "b64dec",
    "b64enc",
    "default",
    "empty",
    "eq",
    "ge",
    "gt",
    "le",
    "lower",
    "lt",
    "ne",
    "not",
    "or",
    "printf",
    "quote",
    "semverCompare",
    "squote",
    "trim",
    "upper",
];

/// Who wrote a configuration, as error messages name it.
const IMAGE: &str = "the image";
const USER_CONFIG: &str = "--config";
const GIVEN: &str = "the configuration";

/// The kinds a kubeadm configuration file may hold, with their API group.
const KINDS: &[(&str, &str)] = &[
    ("InitConfiguration", KUBEADM_GROUP),
    ("ClusterConfiguration", KUBEADM_GROUP),
    ("JoinConfiguration", KUBEADM_GROUP),
    ("ResetConfiguration", KUBEADM_GROUP),
    ("UpgradeConfiguration", KUBEADM_GROUP),
    ("KubeletConfiguration", KUBELET_GROUP),
    ("KubeProxyConfiguration", KUBE_PROXY_GROUP),
];

const INIT: &str = "InitConfiguration";
const CLUSTER: &str = "ClusterConfiguration";
const JOIN: &str = "JoinConfiguration";
const KUBELET: &str = "KubeletConfiguration";

/// Everything that can go wrong rendering, merging or reading a kubeadm configuration.
///
/// Document numbers count from 1 over every `---`-separated document of the file named, empty
/// ones included; a type conflict in [`merge`] gives the document's number in `--config`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeadmError {
    /// The template is malformed or uses what kubeferry does not support.
    #[error("line {line}: {problem}")]
    Template {
        /// The template's line, from 1.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The template names a variable that neither the image's ENV nor kubeferry defines.
    #[error(
        "line {line}: unknown variable '{name}': the image sets no ENV of that name and kubeferry \
         has no such built-in variable"
    )]
    UnknownVariable {
        /// The template's line, from 1.
        line: usize,
        /// The variable, without its dot.
        name: String,
    },
    /// Not YAML. For [`render`], the line is the rendered text's, which is the template's
    /// unless an action above it spans or removes lines; the message quotes the line.
    #[error("{origin} is not valid YAML: {problem}")]
    Yaml {
        /// `the image`, `--config` or `the configuration`.
        origin: &'static str,
        /// The parser's message, with the line it points at.
        problem: String,
    },
    /// A document that is a scalar or a sequence.
    #[error("document {index} of {origin} is {found}, not a mapping")]
    NotAMapping {
        /// Whose file.
        origin: &'static str,
        /// The document's number, from 1.
        index: usize,
        /// What it is instead: `a sequence`, `a string`...
        found: &'static str,
    },
    /// A document without a `kind`.
    #[error("document {index} of {origin} has no kind")]
    NoKind {
        /// Whose file.
        origin: &'static str,
        /// The document's number, from 1.
        index: usize,
    },
    /// A kind that is not part of a kubeadm configuration (a typo kubeadm would only warn about).
    #[error(
        "document {index} of {origin}: kind '{kind}' is not a kubeadm configuration kind (expected \
         InitConfiguration, ClusterConfiguration, JoinConfiguration, KubeletConfiguration or \
         KubeProxyConfiguration)"
    )]
    UnknownKind {
        /// Whose file.
        origin: &'static str,
        /// The document's number, from 1.
        index: usize,
        /// The kind found.
        kind: String,
    },
    /// A document without an `apiVersion`.
    #[error("document {index} of {origin} ({kind}) has no apiVersion")]
    NoApiVersion {
        /// Whose file.
        origin: &'static str,
        /// The document's number, from 1.
        index: usize,
        /// Its kind.
        kind: String,
    },
    /// An `apiVersion` of the wrong group for the kind.
    #[error(
        "document {index} of {origin} ({kind}): apiVersion '{api_version}' is not in the API group \
         {expected}"
    )]
    WrongGroup {
        /// Whose file.
        origin: &'static str,
        /// The document's number, from 1.
        index: usize,
        /// Its kind.
        kind: String,
        /// The apiVersion found.
        api_version: String,
        /// The group the kind belongs to.
        expected: &'static str,
    },
    /// Two documents of one kind: a merge could not tell which one to change.
    #[error("documents {first} and {second} of {origin} are both {kind}")]
    DuplicateKind {
        /// Whose file.
        origin: &'static str,
        /// The first document's number.
        first: usize,
        /// The second document's number.
        second: usize,
        /// The kind.
        kind: String,
    },
    /// A field that is a mapping (or a sequence) on one side of a merge and something else on the
    /// other.
    #[error(
        "document {index} ({kind}): field '{path}' is {base} in {base_origin} but {overlay} in {overlay_origin}"
    )]
    TypeMismatch {
        /// The document's number in the overlay (`--config`).
        index: usize,
        /// The kind.
        kind: String,
        /// The field, as `apiServer.extraArgs`.
        path: String,
        /// The base's type: `a mapping`, `a sequence`, `a string`...
        base: &'static str,
        /// Who wrote the base: `the image`.
        base_origin: &'static str,
        /// The overlay's type.
        overlay: &'static str,
        /// Who wrote the overlay: `--config`.
        overlay_origin: &'static str,
    },
    /// A field whose value the installer cannot use or change.
    #[error("document {index} ({kind}): field '{path}' {problem}")]
    Field {
        /// The document's number (0 for a document the installer created).
        index: usize,
        /// The kind.
        kind: String,
        /// The field, as `nodeRegistration.kubeletExtraArgs`.
        path: String,
        /// What is wrong, as `must be a mapping, not a string`.
        problem: String,
    },
    /// A value given to the installer that cannot be used.
    #[error("invalid {what} '{value}': {problem}")]
    InvalidValue {
        /// What it is: `advertise address`, `bootstrap token`...
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        problem: String,
    },
    /// No address to advertise.
    #[error(
        "no address to advertise: the host has no usable network address; give one with \
         --advertise-address"
    )]
    NoAdvertiseAddress,
}

type Result<T, E = KubeadmError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Values

/// What the installer knows when it renders the configuration: the image's ENV and the host's
/// facts. [`Values::new`] fills it from the ENV with kubeferry's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    /// The template variables: the image's ENV (Kubefile `ENV`, the Clusterfile's `env`), with
    /// the user's `--env` already applied by the caller. [`Values::variables`] adds the
    /// built-in variables.
    pub env: BTreeMap<String, String>,
    /// The address the API server advertises and the kubelet registers as its node IP: the
    /// host's address, or `--advertise-address`. Required; must be an IP address (a host with no
    /// network interface needs a dummy interface and an explicit address).
    pub advertise_address: String,
    /// The Kubernetes version of the bundled binaries, as `v1.20.2`; written as
    /// `kubernetesVersion` when the image does not say.
    pub kubernetes_version: Option<String>,
    /// The bundled registry's name (sealos ENV `registryDomain`; default `sea.hub`).
    pub registry_domain: String,
    /// The bundled registry's port (sealos ENV `registryPort`; default 5000).
    pub registry_port: u16,
    /// The node's name, lower case (kubeadm refuses capitals); empty leaves it to kubeadm, which
    /// takes the host name.
    pub node_name: String,
    /// The CRI socket (sealos ENV `SEALOS_SYS_CRI_ENDPOINT`; default containerd's).
    pub cri_socket: String,
    /// The kubelet's cgroup driver, matching the runtime's: `systemd` (containerd configured with
    /// `SystemdCgroup = true`) or `cgroupfs`.
    pub cgroup_driver: String,
    /// `ClusterConfiguration.controlPlaneEndpoint` when the image sets none, as `host:port`;
    /// kubeadm needs one before a second control-plane node can join.
    pub control_plane_endpoint: Option<String>,
    /// The least time kubeadm waits for the control plane to come up (whole seconds);
    /// `None` keeps the image's or kubeadm's value.
    pub control_plane_timeout: Option<Duration>,
    /// Names and addresses added to the API server certificate's `certSANs` (kubeadm adds the
    /// advertise address, the node name and the service names itself).
    pub extra_cert_sans: Vec<String>,
    /// Let ordinary pods run on the control-plane node (a single-host cluster needs it): sets
    /// `nodeRegistration.taints: []` when the image leaves taints unset.
    pub workloads_on_control_plane: bool,
}

impl Values {
    /// Values from the image's ENV and the host's address, with kubeferry's defaults:
    /// the registry from `registryDomain` / `registryPort` (else `sea.hub:5000`), the Kubernetes
    /// version from `SEALOS_SYS_KUBE_VERSION`, the CRI socket from `SEALOS_SYS_CRI_ENDPOINT`
    /// (else containerd's), the `systemd` cgroup driver, a 20-minute control-plane timeout, and
    /// workloads allowed on the control plane.
    pub fn new(env: BTreeMap<String, String>, advertise_address: impl Into<String>) -> Result<Values> {
        let registry_port = match env.get("registryPort") {
            Some(port) => port.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                KubeadmError::InvalidValue {
                    what: "registryPort",
                    value: port.clone(),
                    problem: "not a port number".into(),
                }
            })?,
            None => DEFAULT_REGISTRY_PORT,
        };
        let non_empty =
            |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()).map(String::from);
        Ok(Values {
            registry_domain: non_empty("registryDomain").unwrap_or_else(|| DEFAULT_REGISTRY_DOMAIN.into()),
            registry_port,
            kubernetes_version: non_empty("SEALOS_SYS_KUBE_VERSION"),
            cri_socket: non_empty("SEALOS_SYS_CRI_ENDPOINT").unwrap_or_else(|| CONTAINERD_SOCKET.into()),
            cgroup_driver: "systemd".into(),
            advertise_address: advertise_address.into(),
            node_name: String::new(),
            control_plane_endpoint: None,
            control_plane_timeout: Some(DEFAULT_CONTROL_PLANE_TIMEOUT),
            extra_cert_sans: Vec::new(),
            workloads_on_control_plane: true,
            env,
        })
    }

    /// The bundled registry as `host:port`: the `imageRepository` written when the image sets
    /// none.
    pub fn registry(&self) -> String {
        join_host_port(&self.registry_domain, self.registry_port)
    }

    /// The template variables: [`Values::env`] plus the built-in variables, which replace ENV
    /// entries of the same name because they state the installer's facts:
    ///
    /// | variable | value | from |
    /// | --- | --- | --- |
    /// | `HostIP` | [`Values::advertise_address`] | sealer |
    /// | `RegistryDomain`, `LocalRegistryDomain`, `registryDomain` | [`Values::registry_domain`] | sealer, sealos |
    /// | `RegistryPort`, `LocalRegistryPort`, `registryPort` | [`Values::registry_port`] | sealer, sealos |
    /// | `RegistryURL`, `LocalRegistryURL` | [`Values::registry`] | sealer |
    /// | `SEALOS_SYS_KUBE_VERSION` | [`Values::kubernetes_version`], when known | sealos |
    /// | `SEALOS_SYS_CRI_ENDPOINT` | [`Values::cri_socket`] | sealos |
    pub fn variables(&self) -> BTreeMap<String, String> {
        let mut vars = self.env.clone();
        let port = self.registry_port.to_string();
        let url = self.registry();
        for (name, value) in [
            ("HostIP", self.advertise_address.trim()),
            ("RegistryDomain", &self.registry_domain),
            ("LocalRegistryDomain", &self.registry_domain),
            ("registryDomain", &self.registry_domain),
            ("RegistryPort", &port),
            ("LocalRegistryPort", &port),
            ("registryPort", &port),
            ("RegistryURL", &url),
            ("LocalRegistryURL", &url),
            ("SEALOS_SYS_CRI_ENDPOINT", &self.cri_socket),
        ] {
            vars.insert(name.into(), value.into());
        }
        if let Some(version) = &self.kubernetes_version {
            vars.insert("SEALOS_SYS_KUBE_VERSION".into(), normalize_version(version));
        }
        vars
    }

    /// Refuses values kubeadm would refuse later, with a clearer message.
    fn check(&self) -> Result<()> {
        let address = self.advertise_address.trim();
        if address.is_empty() {
            return Err(KubeadmError::NoAdvertiseAddress);
        }
        if address.parse::<IpAddr>().is_err() {
            return Err(invalid("advertise address", address, "not an IP address"));
        }
        if !self.node_name.is_empty() && !is_dns_subdomain(&self.node_name) {
            return Err(invalid(
                "node name",
                &self.node_name,
                "a node name is lower-case letters, digits, '-' and '.', at most 253 characters, \
                 starting and ending with a letter or digit",
            ));
        }
        if !is_dns_subdomain(&self.registry_domain.to_ascii_lowercase())
            && self.registry_domain.parse::<IpAddr>().is_err()
        {
            return Err(invalid("registry domain", &self.registry_domain, "not a host name or address"));
        }
        if !matches!(self.cgroup_driver.as_str(), "systemd" | "cgroupfs") {
            return Err(invalid("cgroup driver", &self.cgroup_driver, "expected 'systemd' or 'cgroupfs'"));
        }
        if self.cri_socket.trim().is_empty() {
            return Err(invalid("CRI socket", &self.cri_socket, "empty"));
        }
        if let Some(endpoint) = &self.control_plane_endpoint
            && parse_host_port(endpoint, false).is_none()
        {
            return Err(invalid("control-plane endpoint", endpoint, "expected host or host:port"));
        }
        Ok(())
    }
}

fn invalid(what: &'static str, value: &str, problem: &str) -> KubeadmError {
    KubeadmError::InvalidValue { what, value: value.into(), problem: problem.into() }
}

// ---------------------------------------------------------------------------------------------
// The public operations

/// Expands the image's kubeadm configuration template with `values`' variables, then writes the
/// installer's facts into it, as the [module documentation](self) orders them.
///
/// `template` is the text of `etc/kubeadm.yml.tmpl`, `etc/kubeadm.yml` or [`default_config`];
/// the result is a multi-document YAML file, deterministic for the same input.
pub fn render(template: &str, values: &Values) -> Result<String> {
    values.check()?;
    let text = template::expand(template, &values.variables())?;
    let mut docs = parse_documents(&text, IMAGE)?;
    apply_facts(&mut docs, values)?;
    Ok(emit_documents(&docs))
}

/// Merges `overlay` (the user's `--config`) over `base` (the rendered image configuration).
///
/// Documents are matched by `kind` (each kind belongs to one API group, which must match);
/// mappings are merged recursively field by field; a scalar or a sequence in the overlay
/// replaces the base's; `null` in the overlay removes the field (as in a JSON merge patch); a
/// kind only the overlay has is appended. Documents keep the base's order, fields keep the base's
/// order with new ones appended in the overlay's order, and the output is deterministic.
/// A field that is a mapping or a sequence on one side but not on the other is an error.
pub fn merge(base: &str, overlay: &str) -> Result<String> {
    let mut docs = parse_documents(base, IMAGE)?;
    let overlay = parse_documents(overlay, USER_CONFIG)?;
    merge_documents(&mut docs, overlay, IMAGE, USER_CONFIG)?;
    Ok(emit_documents(&docs))
}

/// The documents of a kubeadm configuration file with their kind, in file order, checked: each
/// one a mapping with a known `kind`, an `apiVersion` of its group, no kind twice. Empty
/// documents are skipped.
pub fn documents(yaml: &str) -> Result<Vec<(String, Value)>> {
    Ok(parse_documents(yaml, GIVEN)?.into_iter().map(|doc| (doc.kind, Value::Mapping(doc.map))).collect())
}

/// The configuration for `kubeadm init --config`: every document but `JoinConfiguration`, which
/// kubeadm init would only warn about.
pub fn init_config(config: &str) -> Result<String> {
    let mut docs = parse_documents(config, GIVEN)?;
    docs.retain(|doc| doc.kind != JOIN);
    Ok(emit_documents(&docs))
}

/// The configuration for `kubeadm join --config` on the joining host: the `JoinConfiguration` of
/// `config` (rendered with the joining host's [`Values`] and merged with its `--config`), created
/// when missing, with the discovery of `join` (`discovery.bootstrapToken`, replacing any
/// `discovery.file`). A control-plane join (`control_plane`) gets
/// `controlPlane.localAPIEndpoint.advertiseAddress` and the certificate key; a worker join drops
/// `controlPlane`. kubeadm 1.20 refuses `--config` together with `--token`, hence this file.
pub fn join_config(config: &str, values: &Values, join: &JoinParams, control_plane: bool) -> Result<String> {
    values.check()?;
    let join = join.checked()?;
    let mut docs = parse_documents(config, GIVEN)?;
    let api = kubeadm_api_version(&docs, values);
    let at = ensure_document(&mut docs, JOIN, &api);
    let doc = &mut docs[at];
    let ctx = DocRef { index: doc.index, kind: JOIN.into() };
    fill_node_registration(&mut doc.map, &ctx, values, &api)?;

    let discovery = child_mapping(&mut doc.map, &ctx, &["discovery"])?;
    discovery.shift_remove("file");
    let mut token = Mapping::new();
    token.insert(s("apiServerEndpoint"), s(&join.server));
    token.insert(s("token"), s(&join.token));
    token.insert(s("caCertHashes"), Value::Sequence(vec![s(&join.ca_cert_hash)]));
    discovery.insert(s("bootstrapToken"), Value::Mapping(token));

    if control_plane {
        let endpoint = child_mapping(&mut doc.map, &ctx, &["controlPlane", "localAPIEndpoint"])?;
        endpoint.insert(s("advertiseAddress"), s(values.advertise_address.trim()));
        if let Some(key) = &join.certificate_key {
            let plane = child_mapping(&mut doc.map, &ctx, &["controlPlane"])?;
            plane.insert(s("certificateKey"), s(key));
        }
    } else {
        doc.map.shift_remove("controlPlane");
    }
    let doc = docs.swap_remove(at);
    Ok(emit_documents(std::slice::from_ref(&doc)))
}

/// kubeferry's default kubeadm configuration, used when the image ships no `etc/kubeadm.yml`:
/// the reference "default kubeadm configuration file with completely contents" of sealer,
/// adapted to kubeadm 1.20 (`kubeadm.k8s.io/v1beta2`), containerd and the systemd cgroup driver,
/// with the control-plane timeout emulation needs, the bundled registry and the pod network of
/// kubeferry's bridge CNI. It names nothing the installer does not write itself (no audit
/// policy, no `/etc/localtime` mounts, no IPVS) and leaves `kubernetesVersion` and the
/// advertise address to [`render`].
pub fn default_config() -> &'static str {
    DEFAULT_CONFIG
}

const DEFAULT_CONFIG: &str = r#"# kubeferry's default kubeadm configuration, used when the image ships no etc/kubeadm.yml.
# kubeferry writes localAPIEndpoint.advertiseAddress, the kubelet's node-ip, the runtime's
# criSocket and kubernetesVersion itself.
apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
localAPIEndpoint:
  bindPort: 6443
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
imageRepository: sea.hub:5000
networking:
  dnsDomain: cluster.local
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/22
apiServer:
  certSANs:
    - 127.0.0.1
    - localhost
    - apiserver.cluster.local
  # kubeadm 1.20 also derives the static pods' startup probes from this; 20 minutes is what
  # a control plane under emulation needed.
  timeoutForControlPlane: 20m0s
controllerManager:
  extraArgs:
    cluster-signing-duration: 876000h
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 2m0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 5m0s
    cacheUnauthorizedTTL: 30s
cgroupDriver: systemd
cgroupsPerQOS: true
clusterDomain: cluster.local
configMapAndSecretChangeDetectionStrategy: Watch
containerLogMaxFiles: 5
containerLogMaxSize: 10Mi
contentType: application/vnd.kubernetes.protobuf
cpuCFSQuota: true
cpuCFSQuotaPeriod: 100ms
cpuManagerPolicy: none
cpuManagerReconcilePeriod: 10s
enableControllerAttachDetach: true
enableDebuggingHandlers: true
enforceNodeAllocatable:
  - pods
eventBurst: 10
eventRecordQPS: 5
evictionHard:
  imagefs.available: 15%
  memory.available: 100Mi
  nodefs.available: 10%
  nodefs.inodesFree: 5%
evictionPressureTransitionPeriod: 5m0s
failSwapOn: true
fileCheckFrequency: 20s
hairpinMode: promiscuous-bridge
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 20s
imageGCHighThresholdPercent: 85
imageGCLowThresholdPercent: 80
imageMinimumGCAge: 2m0s
iptablesDropBit: 15
iptablesMasqueradeBit: 14
kubeAPIBurst: 10
kubeAPIQPS: 5
makeIPTablesUtilChains: true
maxOpenFiles: 1000000
maxPods: 110
nodeLeaseDurationSeconds: 40
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 10s
oomScoreAdj: -999
podPidsLimit: -1
port: 10250
registryBurst: 10
registryPullQPS: 5
rotateCertificates: true
runtimeRequestTimeout: 2m0s
serializeImagePulls: true
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 4h0m0s
syncFrequency: 1m0s
volumeStatsAggPeriod: 1m0s
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: JoinConfiguration
caCertPath: /etc/kubernetes/pki/ca.crt
discovery:
  timeout: 5m0s
"#;

/// What the installer needs to know of a final configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// `ClusterConfiguration.kubernetesVersion`.
    pub kubernetes_version: Option<String>,
    /// `InitConfiguration.localAPIEndpoint.advertiseAddress`.
    pub advertise_address: Option<String>,
    /// `InitConfiguration.localAPIEndpoint.bindPort`, 6443 when unset.
    pub bind_port: u16,
    /// `ClusterConfiguration.controlPlaneEndpoint`.
    pub control_plane_endpoint: Option<String>,
    /// `ClusterConfiguration.imageRepository`: where containerd must find the control-plane and
    /// pause images.
    pub image_repository: Option<String>,
    /// `InitConfiguration.nodeRegistration.criSocket`.
    pub cri_socket: Option<String>,
    /// `KubeletConfiguration.cgroupDriver`: the runtime must use the same.
    pub cgroup_driver: Option<String>,
    /// `ClusterConfiguration.networking.podSubnet`: the CNI configuration must use it.
    pub pod_subnet: Option<String>,
    /// `ClusterConfiguration.networking.serviceSubnet`.
    pub service_subnet: Option<String>,
    /// `ClusterConfiguration.networking.dnsDomain`.
    pub dns_domain: Option<String>,
}

impl Summary {
    /// The address joining nodes use, as `host:port`: the control-plane endpoint (with the bind
    /// port when it names none), else the advertise address and bind port.
    pub fn api_server_endpoint(&self) -> Option<String> {
        if let Some(endpoint) = &self.control_plane_endpoint {
            return match parse_host_port(endpoint, false) {
                Some((host, Some(port))) => Some(join_host_port(&host, port)),
                Some((host, None)) => Some(join_host_port(&host, self.bind_port)),
                None => Some(endpoint.clone()),
            };
        }
        self.advertise_address.as_ref().map(|address| join_host_port(address, self.bind_port))
    }
}

/// Reads the fields the installer needs from a rendered (and merged) configuration.
pub fn summarize(config: &str) -> Result<Summary> {
    let docs = parse_documents(config, GIVEN)?;
    let find = |kind: &str| docs.iter().find(|doc| doc.kind == kind).map(|doc| &doc.map);
    let text = |map: Option<&Mapping>, path: &[&str]| -> Option<String> {
        let (first, rest) = path.split_first()?;
        let mut value = map?.get(*first)?;
        for key in rest {
            value = value.as_mapping()?.get(*key)?;
        }
        match value {
            Value::String(text) if !text.is_empty() => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        }
    };
    let (init, cluster, kubelet) = (find(INIT), find(CLUSTER), find(KUBELET));
    let bind_port = match text(init, &["localAPIEndpoint", "bindPort"]) {
        Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| KubeadmError::Field {
            index: docs.iter().find(|doc| doc.kind == INIT).map_or(0, |doc| doc.index),
            kind: INIT.into(),
            path: "localAPIEndpoint.bindPort".into(),
            problem: format!("is not a port number: '{port}'"),
        })?,
        None => DEFAULT_API_SERVER_PORT,
    };
    Ok(Summary {
        kubernetes_version: text(cluster, &["kubernetesVersion"]),
        advertise_address: text(init, &["localAPIEndpoint", "advertiseAddress"]),
        bind_port,
        control_plane_endpoint: text(cluster, &["controlPlaneEndpoint"]),
        image_repository: text(cluster, &["imageRepository"]),
        cri_socket: text(init, &["nodeRegistration", "criSocket"]),
        cgroup_driver: text(kubelet, &["cgroupDriver"]),
        pod_subnet: text(cluster, &["networking", "podSubnet"]),
        service_subnet: text(cluster, &["networking", "serviceSubnet"]),
        dns_domain: text(cluster, &["networking", "dnsDomain"]),
    })
}

/// What a node needs to join the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinParams {
    /// The API server as `host:port` ([`Summary::api_server_endpoint`]); IPv6 in brackets.
    pub server: String,
    /// The bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: String,
    /// The CA public key's hash, `sha256:` and 64 hex digits (the prefix is added when missing).
    pub ca_cert_hash: String,
    /// The key of the uploaded control-plane certificates (`kubeadm init --upload-certs`),
    /// 64 hex digits; without it a control-plane join needs the certificates copied by hand.
    pub certificate_key: Option<String>,
    /// The bundle file the kubeferry command runs, as `edge-v1.20.2.run` (run as
    /// `./edge-v1.20.2.run`) or a path.
    pub bundle: String,
}

/// The commands that join a node, as printed after `kubeadm init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinCommands {
    /// `kubeadm join ADDR:PORT --token T --discovery-token-ca-cert-hash sha256:H`
    pub worker: String,
    /// The worker command with `--control-plane --certificate-key K`.
    pub control_plane: String,
    /// `./BUNDLE.run join --server ADDR:PORT --token T --ca-cert-hash sha256:H`
    pub kubeferry_worker: String,
    /// The kubeferry worker command with `--control-plane --certificate-key K`.
    pub kubeferry_control_plane: String,
}

/// The exact join commands for `join`, checked: an invalid token, hash, key or address is an
/// error rather than a command that fails on the other host. The bundle's path is shell-quoted
/// when it needs to be.
pub fn join_commands(join: &JoinParams) -> Result<JoinCommands> {
    let join = join.checked()?;
    let worker = format!(
        "kubeadm join {} --token {} --discovery-token-ca-cert-hash {}",
        join.server, join.token, join.ca_cert_hash
    );
    let bundle = shell_quote(&join.bundle);
    let kubeferry_worker = format!(
        "{bundle} join --server {} --token {} --ca-cert-hash {}",
        join.server, join.token, join.ca_cert_hash
    );
    let control_plane_flags = match &join.certificate_key {
        Some(key) => format!(" --control-plane --certificate-key {key}"),
        None => " --control-plane".to_string(),
    };
    Ok(JoinCommands {
        control_plane: format!("{worker}{control_plane_flags}"),
        kubeferry_control_plane: format!("{kubeferry_worker}{control_plane_flags}"),
        worker,
        kubeferry_worker,
    })
}

impl JoinParams {
    /// A normalized copy, or the first thing wrong.
    fn checked(&self) -> Result<JoinParams> {
        let server = self.server.trim();
        let server = match parse_host_port(server, true) {
            Some((host, Some(port))) => join_host_port(&host, port),
            _ => {
                return Err(invalid(
                    "API server address",
                    server,
                    "expected host:port, with an IPv6 address in brackets",
                ));
            }
        };
        let token = self.token.trim();
        let token_ok = token.split_once('.').is_some_and(|(id, secret)| {
            id.len() == 6
                && secret.len() == 16
                && token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
        });
        if !token_ok {
            return Err(invalid(
                "bootstrap token",
                token,
                "expected 6 and 16 lower-case letters or digits joined by '.'",
            ));
        }
        let hash = self.ca_cert_hash.trim();
        let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("CA certificate hash", hash, "expected sha256: and 64 hex digits"));
        }
        let certificate_key = match &self.certificate_key {
            Some(key) => {
                let key = key.trim();
                if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid("certificate key", key, "expected 64 hex digits"));
                }
                Some(key.to_ascii_lowercase())
            }
            None => None,
        };
        let bundle = self.bundle.trim();
        if bundle.is_empty() {
            return Err(invalid("bundle path", bundle, "empty"));
        }
        Ok(JoinParams {
            server,
            token: token.into(),
            ca_cert_hash: format!("sha256:{}", hex.to_ascii_lowercase()),
            certificate_key,
            bundle: if bundle.contains('/') { bundle.into() } else { format!("./{bundle}") },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Documents

/// One document of a configuration file.
#[derive(Debug, Clone)]
struct Doc {
    /// Its number in its file, from 1; 0 for a document the installer created.
    index: usize,
    kind: String,
    map: Mapping,
}

impl Doc {
    fn api_version(&self) -> &str {
        self.map.get("apiVersion").and_then(Value::as_str).unwrap_or("")
    }
}

/// A document named in errors.
#[derive(Debug, Clone)]
struct DocRef {
    index: usize,
    kind: String,
}

impl DocRef {
    fn field_error(&self, path: &[&str], problem: impl Into<String>) -> KubeadmError {
        KubeadmError::Field {
            index: self.index,
            kind: self.kind.clone(),
            path: path.join("."),
            problem: problem.into(),
        }
    }
}

fn parse_documents(text: &str, origin: &'static str) -> Result<Vec<Doc>> {
    let mut docs: Vec<Doc> = Vec::new();
    // The iterator repeats a parse error forever: the `?` below leaves at the first one.
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let mut value = Value::deserialize(document).map_err(|e| yaml_error(origin, text, &e))?;
        // kubeadm's YAML reader applies `<<` merge keys: so does this one, before anything reads
        // or prints the document.
        value.apply_merge().map_err(|e| yaml_error(origin, text, &e))?;
        let map = match value {
            Value::Null => continue,
            Value::Mapping(map) => map,
            other => return Err(KubeadmError::NotAMapping { origin, index, found: type_name(&other) }),
        };
        let Some(kind) = map.get("kind").and_then(Value::as_str).map(String::from) else {
            return Err(KubeadmError::NoKind { origin, index });
        };
        let Some(&(_, expected)) = KINDS.iter().find(|(known, _)| *known == kind) else {
            return Err(KubeadmError::UnknownKind { origin, index, kind });
        };
        let Some(api_version) = map.get("apiVersion").and_then(Value::as_str) else {
            return Err(KubeadmError::NoApiVersion { origin, index, kind });
        };
        if api_group(api_version) != expected {
            return Err(KubeadmError::WrongGroup {
                origin,
                index,
                api_version: api_version.into(),
                kind,
                expected,
            });
        }
        if let Some(first) = docs.iter().find(|doc| doc.kind == kind) {
            return Err(KubeadmError::DuplicateKind { origin, first: first.index, second: index, kind });
        }
        let doc = DocRef { index, kind };
        check_keys(&map, &doc, &mut Vec::new())?;
        docs.push(Doc { index, kind: doc.kind, map });
    }
    Ok(docs)
}

/// Mapping keys must be scalars: the writer prints nothing else, and kubeadm reads nothing else.
fn check_keys(map: &Mapping, doc: &DocRef, path: &mut Vec<String>) -> Result<()> {
    for (key, value) in map {
        let Some(name) = scalar_text(key) else {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            return Err(doc.field_error(&path, format!("has a key that is {}", type_name(key))));
        };
        path.push(name);
        let nested = check_nested_keys(value, doc, path);
        path.pop();
        nested?;
    }
    Ok(())
}

fn check_nested_keys(value: &Value, doc: &DocRef, path: &mut Vec<String>) -> Result<()> {
    match value {
        Value::Mapping(nested) => check_keys(nested, doc, path),
        Value::Sequence(items) => items.iter().try_for_each(|item| check_nested_keys(item, doc, path)),
        Value::Tagged(tagged) => check_nested_keys(&tagged.value, doc, path),
        _ => Ok(()),
    }
}

fn yaml_error(origin: &'static str, text: &str, error: &serde_yaml_ng::Error) -> KubeadmError {
    let mut problem = error.to_string();
    if let Some(location) = error.location()
        && let Some(line) = text.lines().nth(location.line().saturating_sub(1))
        && !line.trim().is_empty()
    {
        let _ = write!(problem, ": `{}`", line.trim_end());
    }
    KubeadmError::Yaml { origin, problem }
}

fn api_group(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(tagged) => type_name(&tagged.value),
    }
}

fn untagged(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => untagged(&tagged.value),
        other => other,
    }
}

fn s(text: &str) -> Value {
    Value::String(text.into())
}

// ---------------------------------------------------------------------------------------------
// Merging

fn merge_documents(
    docs: &mut Vec<Doc>,
    overlay: Vec<Doc>,
    base_origin: &'static str,
    overlay_origin: &'static str,
) -> Result<()> {
    for over in overlay {
        match docs.iter_mut().find(|doc| doc.kind == over.kind) {
            Some(doc) => {
                let ctx = MergeCtx { index: over.index, kind: &over.kind, base_origin, overlay_origin };
                merge_mappings(&mut doc.map, over.map, &ctx, &mut Vec::new())?;
            }
            None => docs.push(over),
        }
    }
    Ok(())
}

struct MergeCtx<'a> {
    index: usize,
    kind: &'a str,
    base_origin: &'static str,
    overlay_origin: &'static str,
}

fn merge_mappings(
    base: &mut Mapping,
    overlay: Mapping,
    ctx: &MergeCtx,
    path: &mut Vec<String>,
) -> Result<()> {
    for (key, over) in overlay {
        path.push(scalar_text(&key).unwrap_or_default());
        if over.is_null() {
            // As in a JSON merge patch: null removes the field.
            base.shift_remove(&key);
        } else {
            match base.get_mut(&key) {
                None => {
                    base.insert(key, over);
                }
                Some(Value::Mapping(current)) if over.is_mapping() => {
                    if let Value::Mapping(over) = over {
                        merge_mappings(current, over, ctx, path)?;
                    }
                }
                Some(current) => {
                    let (old, new) = (untagged(current), untagged(&over));
                    let collection = |v: &Value| v.is_mapping() || v.is_sequence();
                    let conflict = !old.is_null()
                        && (collection(old) || collection(new))
                        && std::mem::discriminant(old) != std::mem::discriminant(new);
                    if conflict {
                        return Err(KubeadmError::TypeMismatch {
                            index: ctx.index,
                            kind: ctx.kind.into(),
                            path: path.join("."),
                            base: type_name(old),
                            base_origin: ctx.base_origin,
                            overlay: type_name(new),
                            overlay_origin: ctx.overlay_origin,
                        });
                    }
                    *current = over;
                }
            }
        }
        path.pop();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The installer's facts

fn apply_facts(docs: &mut Vec<Doc>, values: &Values) -> Result<()> {
    let api = kubeadm_api_version(docs, values);
    let address = values.advertise_address.trim();

    let at = ensure_document(docs, INIT, &api);
    let init = &mut docs[at];
    let ctx = DocRef { index: init.index, kind: INIT.into() };
    child_mapping(&mut init.map, &ctx, &["localAPIEndpoint"])?.insert(s("advertiseAddress"), s(address));
    fill_node_registration(&mut init.map, &ctx, values, &api)?;
    if values.workloads_on_control_plane {
        let registration = child_mapping(&mut init.map, &ctx, &["nodeRegistration"])?;
        if registration.get("taints").is_none_or(Value::is_null) {
            registration.insert(s("taints"), Value::Sequence(Vec::new()));
        }
    }
    let v1beta4 = api.ends_with("/v1beta4");
    if let (true, Some(timeout)) = (v1beta4, values.control_plane_timeout) {
        raise_timeout(&mut init.map, &ctx, &["timeouts", "controlPlaneComponentHealthCheck"], timeout)?;
    }

    let at = ensure_document(docs, CLUSTER, &api);
    let cluster = &mut docs[at];
    let ctx = DocRef { index: cluster.index, kind: CLUSTER.into() };
    if let Some(version) = &values.kubernetes_version {
        fill_if_unset(&mut cluster.map, &ctx, &[], "kubernetesVersion", &normalize_version(version))?;
    }
    fill_if_unset(&mut cluster.map, &ctx, &[], "imageRepository", &values.registry())?;
    if let Some(endpoint) = &values.control_plane_endpoint {
        fill_if_unset(&mut cluster.map, &ctx, &[], "controlPlaneEndpoint", endpoint)?;
    }
    if let (false, Some(timeout)) = (v1beta4, values.control_plane_timeout) {
        raise_timeout(&mut cluster.map, &ctx, &["apiServer", "timeoutForControlPlane"], timeout)?;
    }
    if !values.extra_cert_sans.is_empty() {
        let server = child_mapping(&mut cluster.map, &ctx, &["apiServer"])?;
        let sans = server.entry(s("certSANs")).or_insert(Value::Null);
        if sans.is_null() {
            *sans = Value::Sequence(Vec::new());
        }
        let Value::Sequence(sans) = sans else {
            return Err(ctx.field_error(
                &["apiServer", "certSANs"],
                format!("must be a sequence, not {}", type_name(sans)),
            ));
        };
        for name in &values.extra_cert_sans {
            if !sans.iter().any(|have| have.as_str() == Some(name.as_str())) {
                sans.push(s(name));
            }
        }
    }

    let at = ensure_document(docs, KUBELET, KUBELET_API_VERSION);
    let kubelet = &mut docs[at];
    let ctx = DocRef { index: kubelet.index, kind: KUBELET.into() };
    fill_if_unset(&mut kubelet.map, &ctx, &[], "cgroupDriver", &values.cgroup_driver)?;

    if let Some(join) = docs.iter_mut().find(|doc| doc.kind == JOIN) {
        let ctx = DocRef { index: join.index, kind: JOIN.into() };
        fill_node_registration(&mut join.map, &ctx, values, &api)?;
        if join.map.get("controlPlane").is_some_and(|plane| !plane.is_null()) {
            child_mapping(&mut join.map, &ctx, &["controlPlane", "localAPIEndpoint"])?
                .insert(s("advertiseAddress"), s(address));
        }
    }
    Ok(())
}

/// The host's identity and CRI socket in a `nodeRegistration`.
fn fill_node_registration(map: &mut Mapping, ctx: &DocRef, values: &Values, api: &str) -> Result<()> {
    let address = values.advertise_address.trim();
    let registration = child_mapping(map, ctx, &["nodeRegistration"])?;
    if !values.node_name.is_empty() {
        registration.insert(s("name"), s(&values.node_name));
    }
    fill_if_unset(registration, ctx, &[], "criSocket", &values.cri_socket)?;
    let args = registration.entry(s("kubeletExtraArgs")).or_insert(Value::Null);
    if args.is_null() {
        // v1beta4 made extra arguments a list of name and value; earlier versions a mapping.
        *args = if api.ends_with("/v1beta4") {
            Value::Sequence(Vec::new())
        } else {
            Value::Mapping(Mapping::new())
        };
    }
    match args {
        Value::Mapping(args) => {
            args.insert(s("node-ip"), s(address));
        }
        Value::Sequence(args) => {
            let mut pair = Mapping::new();
            pair.insert(s("name"), s("node-ip"));
            pair.insert(s("value"), s(address));
            let named = |arg: &Value| arg.get("name").and_then(Value::as_str) == Some("node-ip");
            match args.iter_mut().find(|arg| named(arg)) {
                Some(arg) => *arg = Value::Mapping(pair),
                None => args.push(Value::Mapping(pair)),
            }
        }
        other => {
            return Err(ctx.field_error(
                &["nodeRegistration", "kubeletExtraArgs"],
                format!("must be a mapping, not {}", type_name(other)),
            ));
        }
    }
    Ok(())
}

/// Sets `path.field` to `value` when it is absent, null or empty.
fn fill_if_unset(map: &mut Mapping, ctx: &DocRef, path: &[&str], field: &str, value: &str) -> Result<()> {
    let parent = child_mapping(map, ctx, path)?;
    let unset = match parent.get(field) {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) => text.trim().is_empty(),
        Some(_) => false,
    };
    if unset {
        parent.insert(s(field), s(value));
    }
    Ok(())
}

/// Sets a Go duration field to `least` when it is unset or shorter.
fn raise_timeout(map: &mut Mapping, ctx: &DocRef, path: &[&str], least: Duration) -> Result<()> {
    let (field, parents) = path.split_last().ok_or_else(|| ctx.field_error(path, "is empty"))?;
    let parent = child_mapping(map, ctx, parents)?;
    let shorter = match parent.get(*field) {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) if text.trim().is_empty() => true,
        Some(Value::String(text)) => match parse_go_duration(text) {
            Some(seconds) => seconds < least.as_secs_f64(),
            None => return Err(ctx.field_error(path, format!("is not a duration: '{text}'"))),
        },
        Some(other) => {
            return Err(ctx.field_error(path, format!("must be a duration, not {}", type_name(other))));
        }
    };
    if shorter {
        parent.insert(s(field), s(&format_go_duration(least)));
    }
    Ok(())
}

/// The mapping at `path`, created where missing or null.
fn child_mapping<'a>(map: &'a mut Mapping, ctx: &DocRef, path: &[&str]) -> Result<&'a mut Mapping> {
    let mut current = map;
    for (depth, key) in path.iter().enumerate() {
        let slot = current.entry(s(key)).or_insert(Value::Null);
        if slot.is_null() {
            *slot = Value::Mapping(Mapping::new());
        }
        current = match slot {
            Value::Mapping(next) => next,
            other => {
                return Err(
                    ctx.field_error(&path[..=depth], format!("must be a mapping, not {}", type_name(other)))
                );
            }
        };
    }
    Ok(current)
}

/// The index of the document of `kind`, appended (apiVersion and kind only) when missing.
fn ensure_document(docs: &mut Vec<Doc>, kind: &str, api_version: &str) -> usize {
    if let Some(at) = docs.iter().position(|doc| doc.kind == kind) {
        return at;
    }
    let mut map = Mapping::new();
    map.insert(s("apiVersion"), s(api_version));
    map.insert(s("kind"), s(kind));
    docs.push(Doc { index: 0, kind: kind.into(), map });
    docs.len() - 1
}

/// The kubeadm API version for documents the installer creates: the file's own, else the one of
/// the Kubernetes version (v1beta2 before 1.22, v1beta3 before 1.31, then v1beta4).
fn kubeadm_api_version(docs: &[Doc], values: &Values) -> String {
    if let Some(doc) = docs.iter().find(|doc| api_group(doc.api_version()) == KUBEADM_GROUP) {
        return doc.api_version().to_string();
    }
    let minor = values.kubernetes_version.as_deref().and_then(|version| {
        let version = version.trim().trim_start_matches(['v', 'V']);
        let mut parts = version.split('.');
        match (parts.next(), parts.next()) {
            (Some("1"), Some(minor)) => minor.parse::<u32>().ok(),
            _ => None,
        }
    });
    match minor {
        Some(minor) if minor >= 31 => "kubeadm.k8s.io/v1beta4".into(),
        Some(minor) if minor >= 22 => "kubeadm.k8s.io/v1beta3".into(),
        _ => KUBEADM_API_VERSION.into(),
    }
}

fn normalize_version(version: &str) -> String {
    let version = version.trim();
    if version.starts_with(|c: char| c.is_ascii_digit()) { format!("v{version}") } else { version.into() }
}

/// Seconds of a Go duration such as `4m0s`, `1h30m` or `300ms`.
fn parse_go_duration(text: &str) -> Option<f64> {
    let text = text.trim();
    if text == "0" {
        return Some(0.0);
    }
    let mut rest = text;
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let (unit, len) =
            [("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
                .into_iter()
                .find(|(name, _)| rest.starts_with(name))
                .map(|(name, scale)| (scale, name.len()))?;
        total += number * unit;
        rest = &rest[len..];
    }
    Some(total)
}

/// A whole-second duration the way Go prints it: `20m0s`, `1h0m0s`, `45s`.
fn format_go_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m{seconds}s"),
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses and shell words

/// `host` and its port, from `host`, `host:port` or `[v6]:port`; a bare IPv6 address is a host
/// only when `need_port` is false.
fn parse_host_port(text: &str, need_port: bool) -> Option<(String, Option<u16>)> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<Ipv6Addr>().ok()?;
        return match after {
            "" if !need_port => Some((host.into(), None)),
            _ => Some((host.into(), Some(port(after.strip_prefix(':')?)?))),
        };
    }
    if text.parse::<Ipv6Addr>().is_ok() {
        return (!need_port).then(|| (text.into(), None));
    }
    let (host, port_part) = match text.rsplit_once(':') {
        Some((host, p)) => (host, Some(port(p)?)),
        None if need_port => return None,
        None => (text, None),
    };
    let host_ok = host.parse::<IpAddr>().is_ok() || is_dns_subdomain(&host.to_ascii_lowercase());
    host_ok.then(|| (host.into(), port_part))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// A lower-case RFC 1123 subdomain, as Kubernetes wants node names.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn shell_quote(word: &str) -> String {
    let plain = word.bytes().all(|b| b.is_ascii_alphanumeric() || b"./_-+:@%=,".contains(&b));
    if plain { word.into() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

mod template;
mod yaml;

#[allow(unused_imports)]
use template::*;
#[allow(unused_imports)]
use yaml::*;

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../../tests/fixtures/kubeadm/reference-kubeadm.yml");
    const CUSTOMIZE_INIT: &str = include_str!("../../tests/fixtures/kubeadm/reference-customize-init.yml");
    const CUSTOMIZE_JOIN: &str = include_str!("../../tests/fixtures/kubeadm/reference-customize-join.yml");
    const SEALER_TEMPLATE: &str = include_str!("../../tests/fixtures/kubeadm/sealer-style-kubeadm.yml.tmpl");
    const SEALOS_TEMPLATE: &str = include_str!("../../tests/fixtures/kubeadm/sealos-style-kubeadm.yml.tmpl");
    const SEALOS_PARTIAL: &str = include_str!("../../tests/fixtures/kubeadm/sealos-partial-kubeadm.yml");
    const USER_NETWORKING: &str = include_str!("../../tests/fixtures/kubeadm/user-config-networking.yml");
    const USER_KUBE_PROXY: &str = include_str!("../../tests/fixtures/kubeadm/user-config-kube-proxy.yml");

    const HASH: &str = "sha256:7c2e69a1ba9d2b5f3e8e5c6b1a0d4f2e3c9b8a7d6e5f4c3b2a1908f7e6d5c4b3";
    const KEY: &str = "d4a1e7c6b5f40312a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6";

    fn values() -> Values {
        let mut values = Values::new(BTreeMap::new(), "192.168.122.10").unwrap();
        values.kubernetes_version = Some("v1.20.2".into());
        values.node_name = "node-1".into();
        values
    }

    fn customize_examples() -> String {
        format!("{CUSTOMIZE_INIT}---\n{CUSTOMIZE_JOIN}")
    }

    fn join_params() -> JoinParams {
        JoinParams {
            server: "192.168.122.10:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hash: HASH.into(),
            certificate_key: Some(KEY.into()),
            bundle: "edge-v1.20.2.run".into(),
        }
    }

    fn kinds(yaml: &str) -> Vec<String> {
        documents(yaml).unwrap().into_iter().map(|(kind, _)| kind).collect()
    }

    fn get<'a>(yaml: &'a [(String, Value)], kind: &str, path: &[&str]) -> Option<&'a Value> {
        let mut value = &yaml.iter().find(|(k, _)| k == kind)?.1;
        for key in path {
            value = value.get(*key)?;
        }
        Some(value)
    }

    // --- Rendering -------------------------------------------------------------------------------

    #[test]
    fn render_reference_default_file() {
        let rendered = render(REFERENCE, &values()).unwrap();
        insta::assert_snapshot!("render_reference_default_file", rendered);
        let docs = documents(&rendered).unwrap();
        // The image's explicit choices stay; what it left to the installer is filled.
        assert_eq!(get(&docs, INIT, &["nodeRegistration", "criSocket"]).unwrap(), "/var/run/dockershim.sock");
        assert_eq!(get(&docs, CLUSTER, &["imageRepository"]).unwrap(), "sea.hub:5000/library");
        assert_eq!(get(&docs, CLUSTER, &["kubernetesVersion"]).unwrap(), "v1.22.15");
        assert_eq!(get(&docs, KUBELET, &["cgroupDriver"]).unwrap(), "systemd");
        assert_eq!(get(&docs, INIT, &["localAPIEndpoint", "advertiseAddress"]).unwrap(), "192.168.122.10");
        assert_eq!(get(&docs, CLUSTER, &["apiServer", "timeoutForControlPlane"]).unwrap(), "20m0s");
    }

    #[test]
    fn render_default_config() {
        let rendered = render(default_config(), &values()).unwrap();
        insta::assert_snapshot!("render_default_config", rendered);
        assert_eq!(
            kinds(&rendered),
            [
                "InitConfiguration",
                "ClusterConfiguration",
                "KubeProxyConfiguration",
                "KubeletConfiguration",
                "JoinConfiguration"
            ]
        );
        let docs = documents(&rendered).unwrap();
        for (kind, version) in [
            (INIT, KUBEADM_API_VERSION),
            (CLUSTER, KUBEADM_API_VERSION),
            (JOIN, KUBEADM_API_VERSION),
            (KUBELET, KUBELET_API_VERSION),
            ("KubeProxyConfiguration", KUBE_PROXY_API_VERSION),
        ] {
            assert_eq!(get(&docs, kind, &["apiVersion"]).unwrap(), version);
        }
        assert_eq!(get(&docs, INIT, &["nodeRegistration", "criSocket"]).unwrap(), CONTAINERD_SOCKET);
        assert_eq!(get(&docs, CLUSTER, &["kubernetesVersion"]).unwrap(), "v1.20.2");
        assert_eq!(get(&docs, CLUSTER, &["imageRepository"]).unwrap(), "sea.hub:5000");
        assert_eq!(get(&docs, CLUSTER, &["networking", "podSubnet"]).unwrap(), "10.244.0.0/16");
    }

    #[test]
    fn default_config_is_a_valid_file_and_names_no_host() {
        let docs = documents(default_config()).unwrap();
        assert_eq!(docs.len(), 5);
        assert!(get(&docs, INIT, &["localAPIEndpoint", "advertiseAddress"]).is_none());
        assert!(get(&docs, CLUSTER, &["kubernetesVersion"]).is_none());
        assert!(
            get(&docs, JOIN, &["controlPlane"]).is_none(),
            "a worker join must not become a control-plane join"
        );
    }

    #[test]
    fn render_sealer_style_template() {
        let mut values = values();
        values.env.insert("PodCIDR".into(), "172.20.0.0/16".into());
        let rendered = render(SEALER_TEMPLATE, &values).unwrap();
        insta::assert_snapshot!("render_sealer_style_template", rendered);
        let docs = documents(&rendered).unwrap();
        // `{{or .RegistryURL "sea.hub:5000"}}`: RegistryURL is a built-in variable.
        assert_eq!(get(&docs, CLUSTER, &["imageRepository"]).unwrap(), "sea.hub:5000");
        // The stale address of the machine the image was made on is replaced.
        assert_eq!(get(&docs, INIT, &["localAPIEndpoint", "advertiseAddress"]).unwrap(), "192.168.122.10");
        // An explicit cgroup driver is the image's to choose.
        assert_eq!(get(&docs, KUBELET, &["cgroupDriver"]).unwrap(), "cgroupfs");
    }

    #[test]
    fn render_sealos_style_template() {
        let env = BTreeMap::from([
            ("registryDomain".to_string(), "sealos.hub".to_string()),
            ("registryPort".to_string(), "5050".to_string()),
            ("SEALOS_SYS_KUBE_VERSION".to_string(), "v1.20.2".to_string()),
            ("SEALOS_SYS_CRI_ENDPOINT".to_string(), "/var/run/containerd/containerd.sock".to_string()),
        ]);
        let values = Values::new(env, "10.0.2.15").unwrap();
        assert_eq!(values.registry(), "sealos.hub:5050");
        let rendered = render(SEALOS_TEMPLATE, &values).unwrap();
        insta::assert_snapshot!("render_sealos_style_template", rendered);
        let docs = documents(&rendered).unwrap();
        assert_eq!(get(&docs, CLUSTER, &["imageRepository"]).unwrap(), "sealos.hub:5050");
        assert_eq!(get(&docs, CLUSTER, &["networking", "podSubnet"]).unwrap(), "10.244.0.0/16");
        assert_eq!(get(&docs, CLUSTER, &["kubernetesVersion"]).unwrap(), "v1.20.2");
        assert_eq!(
            get(&docs, INIT, &["nodeRegistration", "criSocket"]).unwrap(),
            "/var/run/containerd/containerd.sock"
        );
    }

    #[test]
    fn render_partial_image_file_creates_what_the_installer_needs() {
        let rendered = render(SEALOS_PARTIAL, &values()).unwrap();
        insta::assert_snapshot!("render_partial_image_file", rendered);
        assert_eq!(kinds(&rendered), ["ClusterConfiguration", "InitConfiguration", "KubeletConfiguration"]);
    }

    #[test]
    fn render_picks_the_kubeadm_api_of_the_kubernetes_version_for_new_documents() {
        for (version, api) in [
            ("v1.20.2", "kubeadm.k8s.io/v1beta2"),
            ("1.25.3", "kubeadm.k8s.io/v1beta3"),
            ("v1.31.0", "kubeadm.k8s.io/v1beta4"),
        ] {
            let mut values = values();
            values.kubernetes_version = Some(version.into());
            let docs = documents(&render("", &values).unwrap()).unwrap();
            assert_eq!(get(&docs, INIT, &["apiVersion"]).unwrap(), api, "{version}");
            let ip = "192.168.122.10";
            match api {
                "kubeadm.k8s.io/v1beta4" => {
                    let args = get(&docs, INIT, &["nodeRegistration", "kubeletExtraArgs"]).unwrap();
                    assert_eq!(args[0]["name"], "node-ip");
                    assert_eq!(args[0]["value"], ip);
                    assert_eq!(
                        get(&docs, INIT, &["timeouts", "controlPlaneComponentHealthCheck"]).unwrap(),
                        "20m0s"
                    );
                    assert!(get(&docs, CLUSTER, &["apiServer"]).is_none());
                }
                _ => {
                    let args =
                        get(&docs, INIT, &["nodeRegistration", "kubeletExtraArgs", "node-ip"]).unwrap();
                    assert_eq!(args, ip);
                }
            }
        }
    }

    #[test]
    fn render_precedence_between_image_and_installer() {
        let image = "\
apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 172.16.0.181
nodeRegistration:
  name: builder
  criSocket: ''
  taints:
    - key: dedicated
      effect: NoSchedule
  kubeletExtraArgs:
    node-ip: 172.16.0.181
    max-pods: '50'
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: v1.20.1
imageRepository: registry.example:5000/k8s
apiServer:
  timeoutForControlPlane: 30m0s
  certSANs: [kube.example]
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: JoinConfiguration
controlPlane:
  localAPIEndpoint:
    advertiseAddress: 172.16.0.181
";
        let mut values = values();
        values.extra_cert_sans = vec!["kube.example".into(), "10.0.0.2".into()];
        let docs = documents(&render(image, &values).unwrap()).unwrap();
        // Host identity: the installer's.
        assert_eq!(get(&docs, INIT, &["localAPIEndpoint", "advertiseAddress"]).unwrap(), "192.168.122.10");
        assert_eq!(get(&docs, INIT, &["nodeRegistration", "name"]).unwrap(), "node-1");
        assert_eq!(
            get(&docs, INIT, &["nodeRegistration", "kubeletExtraArgs", "node-ip"]).unwrap(),
            "192.168.122.10"
        );
        assert_eq!(get(&docs, INIT, &["nodeRegistration", "kubeletExtraArgs", "max-pods"]).unwrap(), "50");
        assert_eq!(
            get(&docs, JOIN, &["controlPlane", "localAPIEndpoint", "advertiseAddress"]).unwrap(),
            "192.168.122.10"
        );
        // Runtime facts: the image's where it set them, the installer's where it left them empty.
        assert_eq!(get(&docs, INIT, &["nodeRegistration", "criSocket"]).unwrap(), CONTAINERD_SOCKET);
        assert_eq!(get(&docs, CLUSTER, &["kubernetesVersion"]).unwrap(), "v1.20.1");
        assert_eq!(get(&docs, CLUSTER, &["imageRepository"]).unwrap(), "registry.example:5000/k8s");
        assert_eq!(get(&docs, KUBELET, &["cgroupDriver"]).unwrap(), "cgroupfs");
        // Adjustments: a longer timeout stays, SANs are a union, explicit taints stay.
        assert_eq!(get(&docs, CLUSTER, &["apiServer", "timeoutForControlPlane"]).unwrap(), "30m0s");
        let sans = get(&docs, CLUSTER, &["apiServer", "certSANs"]).unwrap();
        assert_eq!(sans, &serde_yaml_ng::from_str::<Value>("[kube.example, 10.0.0.2]").unwrap());
        assert_eq!(
            get(&docs, INIT, &["nodeRegistration", "taints"]).unwrap().as_sequence().unwrap().len(),
            1
        );

        // A shorter timeout is raised; no node name leaves the image's.
        let image = image.replace("30m0s", "4m0s");
        let mut values = values.clone();
        values.node_name.clear();
        let docs = documents(&render(&image, &values).unwrap()).unwrap();
        assert_eq!(get(&docs, CLUSTER, &["apiServer", "timeoutForControlPlane"]).unwrap(), "20m0s");
        assert_eq!(get(&docs, INIT, &["nodeRegistration", "name"]).unwrap(), "builder");
    }

    #[test]
    fn render_is_idempotent_and_deterministic() {
        for template in [REFERENCE, default_config(), SEALER_TEMPLATE] {
            let mut values = values();
            values.env.insert("PodCIDR".into(), "172.20.0.0/16".into());
            let once = render(template, &values).unwrap();
            assert_eq!(render(template, &values).unwrap(), once);
            assert_eq!(render(&once, &values).unwrap(), once);
        }
    }

    // --- Merging ---------------------------------------------------------------------------------

    #[test]
    fn merge_reference_customize_examples_over_the_full_default_file() {
        let base = render(REFERENCE, &values()).unwrap();
        let merged = merge(&base, &customize_examples()).unwrap();
        insta::assert_snapshot!("merge_reference_customize_examples", merged);
        // The examples restate the default file's values: nothing else changes.
        assert_eq!(merged, base);
    }

    #[test]
    fn merge_customize_examples_over_the_rendered_default_config() {
        let base = render(default_config(), &values()).unwrap();
        let merged = merge(&base, &customize_examples()).unwrap();
        insta::assert_snapshot!("merge_customize_examples_over_default_config", merged);
        let docs = documents(&merged).unwrap();
        assert_eq!(get(&docs, INIT, &["nodeRegistration", "criSocket"]).unwrap(), "/var/run/dockershim.sock");
        assert_eq!(get(&docs, JOIN, &["nodeRegistration", "criSocket"]).unwrap(), "/var/run/dockershim.sock");
        assert_eq!(get(&docs, JOIN, &["controlPlane", "localAPIEndpoint", "bindPort"]).unwrap(), 6443);
        // Fields the examples do not name are the base's.
        assert_eq!(
            get(&docs, INIT, &["nodeRegistration", "kubeletExtraArgs", "node-ip"]).unwrap(),
            "192.168.122.10"
        );
    }

    #[test]
    fn merge_config_that_adds_kube_proxy_configuration() {
        let base = render(&customize_examples(), &values()).unwrap();
        assert!(!kinds(&base).contains(&"KubeProxyConfiguration".to_string()));
        let merged = merge(&base, USER_KUBE_PROXY).unwrap();
        insta::assert_snapshot!("merge_adds_kube_proxy_configuration", merged);
        assert_eq!(kinds(&merged).last().map(String::as_str), Some("KubeProxyConfiguration"));
    }

    #[test]
    fn merge_field_by_field() {
        let base = render(REFERENCE, &values()).unwrap();
        let merged = merge(&base, USER_NETWORKING).unwrap();
        insta::assert_snapshot!("merge_field_by_field", merged);
        let docs = documents(&merged).unwrap();
        // Scalars replaced, siblings kept.
        assert_eq!(get(&docs, CLUSTER, &["networking", "podSubnet"]).unwrap(), "10.244.0.0/16");
        assert_eq!(get(&docs, CLUSTER, &["networking", "serviceSubnet"]).unwrap(), "10.96.0.0/22");
        // Mappings merged: one extra argument added, one changed, the rest kept.
        assert_eq!(get(&docs, CLUSTER, &["apiServer", "extraArgs", "audit-log-maxage"]).unwrap(), "30");
        assert_eq!(
            get(&docs, CLUSTER, &["apiServer", "extraArgs", "service-node-port-range"]).unwrap(),
            "20000-32767"
        );
        assert_eq!(get(&docs, CLUSTER, &["apiServer", "extraArgs", "audit-log-format"]).unwrap(), "json");
        // Sequences replaced whole.
        let volumes = get(&docs, CLUSTER, &["controllerManager", "extraVolumes"]).unwrap();
        assert_eq!(volumes.as_sequence().unwrap().len(), 0);
        // null removes.
        assert!(get(&docs, CLUSTER, &["etcd", "local", "extraArgs"]).is_none());
        // The user overrides the installer's facts too.
        assert_eq!(get(&docs, INIT, &["localAPIEndpoint", "advertiseAddress"]).unwrap(), "10.1.2.3");
        // Order: the base's documents, the base's fields first.
        assert_eq!(kinds(&merged), kinds(&base));
        let cluster_keys: Vec<_> =
            get(&docs, CLUSTER, &[]).unwrap().as_mapping().unwrap().keys().cloned().collect();
        assert_eq!(cluster_keys.first().unwrap(), "apiVersion");
        assert_eq!(cluster_keys.last().unwrap(), "dns");
    }

    #[test]
    fn merge_is_deterministic_and_an_empty_overlay_changes_nothing() {
        let base = render(REFERENCE, &values()).unwrap();
        assert_eq!(merge(&base, "").unwrap(), base);
        assert_eq!(merge(&base, "# nothing\n---\n").unwrap(), base);
        assert_eq!(merge(&base, USER_NETWORKING).unwrap(), merge(&base, USER_NETWORKING).unwrap());
    }

    #[test]
    fn merge_accepts_a_newer_version_of_the_same_group() {
        let base = "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nnetworking: {podSubnet: 10.0.0.0/16}\n";
        let overlay = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking: {serviceSubnet: 10.1.0.0/16}\n";
        assert_eq!(
            merge(base, overlay).unwrap(),
            "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking:\n  \
             podSubnet: 10.0.0.0/16\n  serviceSubnet: 10.1.0.0/16\n"
        );
    }

    // --- Errors ----------------------------------------------------------------------------------

    #[test]
    fn merge_type_conflict_names_document_kind_and_field() {
        let base = render(REFERENCE, &values()).unwrap();
        let overlay = "\
apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
networking: 10.244.0.0/16
";
        assert_eq!(
            merge(&base, overlay).unwrap_err().to_string(),
            "document 2 (ClusterConfiguration): field 'networking' is a mapping in the image but a string in --config"
        );
    }

    #[test]
    fn error_messages() {
        let v = values();
        let base = render(REFERENCE, &v).unwrap();
        let header = "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\n";
        let mut no_address = v.clone();
        no_address.advertise_address = " ".into();
        let mut bad_address = v.clone();
        bad_address.advertise_address = "eth0".into();
        let mut bad_name = v.clone();
        bad_name.node_name = "Node_1".into();
        let mut bad_driver = v.clone();
        bad_driver.cgroup_driver = "system".into();
        let join = |edit: &dyn Fn(&mut JoinParams)| {
            let mut params = join_params();
            edit(&mut params);
            join_commands(&params).unwrap_err().to_string()
        };
        let cases: Vec<(&str, String)> = vec![
            ("unknown variable", render("a: 1\nb: {{ .podCIDR }}\n", &v).unwrap_err().to_string()),
            ("unknown variable in a comparison", render("{{ if eq .criType \"docker\" }}x{{ end }}", &v).unwrap_err().to_string()),
            ("unclosed action", render("a: 1\nb: {{ .HostIP \n", &v).unwrap_err().to_string()),
            ("unsupported action", render("a:\n{{ range .x }}\n{{ end }}", &v).unwrap_err().to_string()),
            ("unsupported function", render("a: {{ toYaml .HostIP }}", &v).unwrap_err().to_string()),
            ("if without end", render("{{ if .HostIP }}\na: 1\n", &v).unwrap_err().to_string()),
            ("end without if", render("a: 1\n{{ end }}", &v).unwrap_err().to_string()),
            ("two else", render("{{ if .HostIP }}a{{ else }}b{{ else }}c{{ end }}", &v).unwrap_err().to_string()),
            ("wrong arity", render("{{ ne .HostIP }}", &v).unwrap_err().to_string()),
            ("mixed comparison", render("{{ if gt .RegistryPort 1000 }}x{{ end }}", &v).unwrap_err().to_string()),
            ("template variable", render("{{ $x := .HostIP }}", &v).unwrap_err().to_string()),
            ("semver", render("{{ semverCompare \">=1.20\" \"latest\" }}", &v).unwrap_err().to_string()),
            ("not yaml", render("kind: InitConfiguration\n  bad: [\n", &v).unwrap_err().to_string()),
            ("not yaml in --config", merge(&base, "kind: [").unwrap_err().to_string()),
            ("not a mapping", merge(&base, "- a\n- b\n").unwrap_err().to_string()),
            ("no kind", merge(&base, "---\n---\napiVersion: kubeadm.k8s.io/v1beta2\n").unwrap_err().to_string()),
            ("unknown kind", merge(&base, "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfig\n").unwrap_err().to_string()),
            ("no apiVersion", merge(&base, "kind: ClusterConfiguration\n").unwrap_err().to_string()),
            ("wrong group", merge(&base, "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: ClusterConfiguration\n").unwrap_err().to_string()),
            ("duplicate kind", merge(&base, &format!("{header}---\n{header}")).unwrap_err().to_string()),
            ("sequence against mapping", merge(&base, &format!("{header}apiServer:\n  extraArgs: [a]\n")).unwrap_err().to_string()),
            ("mapping against sequence", merge(&base, &format!("{header}apiServer:\n  extraVolumes: {{name: x}}\n")).unwrap_err().to_string()),
            ("complex key", merge(&base, &format!("{header}networking:\n  ? [a]\n  : b\n")).unwrap_err().to_string()),
            ("field of the wrong type", render("apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nnodeRegistration: node-1\n", &v).unwrap_err().to_string()),
            ("timeout that is not a duration", render(&format!("{header}apiServer:\n  timeoutForControlPlane: soon\n"), &v).unwrap_err().to_string()),
            ("no advertise address", render(default_config(), &no_address).unwrap_err().to_string()),
            ("advertise address that is not an IP", render(default_config(), &bad_address).unwrap_err().to_string()),
            ("node name", render(default_config(), &bad_name).unwrap_err().to_string()),
            ("cgroup driver", render(default_config(), &bad_driver).unwrap_err().to_string()),
            ("registry port", Values::new(BTreeMap::from([("registryPort".into(), "http".into())]), "10.0.0.1").unwrap_err().to_string()),
            ("bad bind port", summarize("apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\nlocalAPIEndpoint: {bindPort: 70000}\n").unwrap_err().to_string()),
            ("join: token", join(&|p| p.token = "abcdef0123456789abcdef".into())),
            ("join: hash", join(&|p| p.ca_cert_hash = "sha256:abc".into())),
            ("join: certificate key", join(&|p| p.certificate_key = Some("xyz".into()))),
            ("join: server without port", join(&|p| p.server = "192.168.122.10".into())),
            ("join: bare IPv6 server", join(&|p| p.server = "fd00::1:6443".into())),
        ];
        let text: String = cases.iter().map(|(name, message)| format!("{name}:\n  {message}\n")).collect();
        insta::assert_snapshot!("error_messages", text);
    }

    // --- Templates -------------------------------------------------------------------------------

    fn expand(text: &str, vars: &[(&str, &str)]) -> Result<String> {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        template::expand(text, &vars)
    }

    #[test]
    fn template_syntax_of_real_images() {
        let vars = [
            ("registryDomain", "sealos.hub"),
            ("registryPort", "5000"),
            ("SEALOS_SYS_KUBE_VERSION", "v1.26.3"),
            ("empty", ""),
        ];
        let cases = [
            // sealer basefs kubeadm.yml.tmpl
            (r#"{{or .RegistryURL "sea.hub:5000"}}"#, "sea.hub:5000"),
            // labring cluster-image config.toml.tmpl / image-cri-shim.yaml.tmpl
            ("{{ .registryDomain }}:{{ .registryPort }}", "sealos.hub:5000"),
            (
                r#"{{ if and (ne .SEALOS_SYS_KUBE_VERSION "") (ge .SEALOS_SYS_KUBE_VERSION "v1.26") }}v1{{ else }}v1alpha2{{ end }}"#,
                "v1",
            ),
            // sealos documentation: semverCompare and default
            (
                r#"{{ if semverCompare "^1.26.0" .SEALOS_SYS_KUBE_VERSION }}version: v1{{ else }}version: v1alpha2{{ end }}"#,
                "version: v1",
            ),
            (r#"{{ .podCIDR | default "10.244.0.0/16" }}"#, "10.244.0.0/16"),
            (r#"{{ default "x" .empty }}"#, "x"),
            ("a\n  {{- /* a comment */ -}}\n  b", "ab"),
            ("a {{- .registryPort -}} b", "a5000b"),
            ("{{ if .missing }}yes{{ else if .empty }}no{{ else }}neither{{ end }}", "neither"),
            ("{{ if not .missing }}absent{{ end }}", "absent"),
            (r#"{{ printf "%s:%s" .registryDomain .registryPort }}"#, "sealos.hub:5000"),
            (r#"{{ printf "%d%%" 15 }}"#, "15%"),
            ("{{ .registryDomain | upper | quote }}", "\"SEALOS.HUB\""),
            ("{{ b64enc .registryDomain }} {{ b64dec \"c2VhLmh1Yg==\" }}", "c2VhbG9zLmh1Yg== sea.hub"),
            ("{{ eq .registryPort \"80\" \"5000\" }} {{ lt 1 2 }} {{ empty .missing }}", "true true true"),
            (r#"{{ "}}" }}"#, "}}"),
            ("no actions: ${VAR} $(VAR) stay as they are", "no actions: ${VAR} $(VAR) stay as they are"),
        ];
        for (template, want) in cases {
            assert_eq!(expand(template, &vars).unwrap(), want, "{template}");
        }
    }

    #[test]
    fn template_lines_are_counted_across_text_and_actions() {
        let err = expand("a\n{{ if true\n}}\nb\n{{ .x }}\n{{ end }}", &[]).unwrap_err();
        assert_eq!(err, KubeadmError::UnknownVariable { line: 5, name: "x".into() });
        let err = expand("a\n{{/* c\nc */}}\n{{ f }}", &[]).unwrap_err();
        assert!(matches!(err, KubeadmError::Template { line: 4, .. }), "{err}");
    }

    #[test]
    fn semver_constraints() {
        for (constraint, version, want) in [
            ("^1.26.0", "v1.26.3", true),
            ("^1.26.0", "v2.0.0", false),
            ("^0.2.3", "0.2.9", true),
            ("^0.2.3", "0.3.0", false),
            ("~1.20.0", "v1.20.2", true),
            ("~1.20.0", "v1.21.0", false),
            (">= 1.20, < 1.22", "v1.21.9", true),
            (">=1.20 <1.22", "v1.22.0", false),
            ("<1.20 || >=1.25", "1.26.0", true),
            ("=1.20.2", "v1.20.2", true),
            ("!=1.20.2", "v1.20.2", false),
            (">=1.20.0", "v1.21.0-rc.1", false),
        ] {
            assert_eq!(semver_compare(constraint, version), Ok(want), "{constraint} {version}");
        }
        assert!(semver_compare("1.x", "1.2.0").is_err());
    }

    // --- Writing YAML ----------------------------------------------------------------------------

    #[test]
    fn strings_keep_their_type_for_yaml_1_1_readers() {
        let words = [
            "yes",
            "on",
            "off",
            "y",
            "n",
            "No",
            "~",
            "null",
            "0755",
            "1_000",
            "0x1F",
            "1e3",
            "1:20",
            "2001-01-01",
            ".inf",
            "-.5",
            "127.0.0.1",
            "",
            " padded",
            "a: b",
            "x #y",
            "- x",
            "#c",
            "'quoted'",
            "line\nbreak",
            "tab\there",
            "<<",
            "=",
        ];
        let mut map = Mapping::new();
        for word in words {
            map.insert(s(word), s(word));
        }
        let text = emit_documents(&[Doc { index: 1, kind: String::new(), map: map.clone() }]);
        for line in text.lines() {
            // Each key is its own value: a quoted key means a quoted value.
            assert!(line.starts_with(['\'', '"']), "unquoted: {line}");
        }
        assert_eq!(serde_yaml_ng::from_str::<Value>(&text).unwrap(), Value::Mapping(map));
        let plain = [
            "v1.20.2",
            "10.96.0.0/22",
            "2m0s",
            "15%",
            "100Mi",
            "sea.hub:5000",
            "http://0.0.0.0:2381",
            "/etc/kubernetes",
        ];
        for word in plain {
            assert_eq!(quote_yaml(word), word);
        }
    }

    #[test]
    fn yaml_anchors_and_merge_keys_are_resolved() {
        let yaml = "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\n\
                    apiServer:\n  extraArgs: &args {a: '1', b: '2'}\n\
                    controllerManager:\n  extraArgs:\n    <<: *args\n    b: '3'\n";
        let text = merge(yaml, "").unwrap();
        assert!(!text.contains("<<") && !text.contains('&') && !text.contains('*'), "{text}");
        let docs = documents(&text).unwrap();
        assert_eq!(get(&docs, CLUSTER, &["controllerManager", "extraArgs", "a"]).unwrap(), "1");
        assert_eq!(get(&docs, CLUSTER, &["controllerManager", "extraArgs", "b"]).unwrap(), "3");
        assert_eq!(get(&docs, CLUSTER, &["apiServer", "extraArgs", "b"]).unwrap(), "2");
    }

    #[test]
    fn nested_sequences_and_empty_collections() {
        let yaml = "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\na:\n  - - 1\n    - 2\n  - {}\n  - []\n  - k: v\n    l:\n      - x\nb: {}\n";
        let docs = parse_documents(yaml, GIVEN).unwrap();
        let text = emit_documents(&docs);
        assert_eq!(text, yaml);
    }

    // --- Join ------------------------------------------------------------------------------------

    #[test]
    fn join_commands_are_exact() {
        let commands = join_commands(&join_params()).unwrap();
        assert_eq!(
            commands.worker,
            format!(
                "kubeadm join 192.168.122.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH}"
            )
        );
        assert_eq!(
            commands.control_plane,
            format!("{} --control-plane --certificate-key {KEY}", commands.worker)
        );
        assert_eq!(
            commands.kubeferry_worker,
            format!(
                "./edge-v1.20.2.run join --server 192.168.122.10:6443 --token abcdef.0123456789abcdef --ca-cert-hash {HASH}"
            )
        );
        assert_eq!(
            commands.kubeferry_control_plane,
            format!("{} --control-plane --certificate-key {KEY}", commands.kubeferry_worker)
        );
    }

    #[test]
    fn join_commands_normalize_and_quote() {
        let params = JoinParams {
            server: "[fd00::10]:6443".into(),
            token: " abcdef.0123456789abcdef\n".into(),
            ca_cert_hash: HASH.trim_start_matches("sha256:").to_uppercase(),
            certificate_key: None,
            bundle: "/tmp/my bundle's.run".into(),
        };
        let commands = join_commands(&params).unwrap();
        assert_eq!(
            commands.worker,
            format!(
                "kubeadm join [fd00::10]:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH}"
            )
        );
        assert_eq!(commands.control_plane, format!("{} --control-plane", commands.worker));
        assert_eq!(
            commands.kubeferry_worker,
            format!(
                r"'/tmp/my bundle'\''s.run' join --server [fd00::10]:6443 --token abcdef.0123456789abcdef --ca-cert-hash {HASH}"
            )
        );
    }

    #[test]
    fn join_config_for_worker_and_control_plane() {
        let mut joiner = values();
        joiner.advertise_address = "192.168.122.11".into();
        joiner.node_name = "node-2".into();
        let config = render(default_config(), &joiner).unwrap();
        let worker = join_config(&config, &joiner, &join_params(), false).unwrap();
        let control_plane = join_config(&config, &joiner, &join_params(), true).unwrap();
        insta::assert_snapshot!("join_config_worker", worker);
        insta::assert_snapshot!("join_config_control_plane", control_plane);
        // An image without JoinConfiguration still joins.
        let bare =
            join_config(&render(SEALOS_PARTIAL, &joiner).unwrap(), &joiner, &join_params(), false).unwrap();
        assert_eq!(kinds(&bare), ["JoinConfiguration"]);
        let docs = documents(&bare).unwrap();
        assert_eq!(
            get(&docs, JOIN, &["nodeRegistration", "kubeletExtraArgs", "node-ip"]).unwrap(),
            "192.168.122.11"
        );
        assert_eq!(
            get(&docs, JOIN, &["discovery", "bootstrapToken", "apiServerEndpoint"]).unwrap(),
            "192.168.122.10:6443"
        );
    }

    #[test]
    fn init_config_leaves_out_join_configuration() {
        let config = render(default_config(), &values()).unwrap();
        assert_eq!(
            kinds(&init_config(&config).unwrap()),
            ["InitConfiguration", "ClusterConfiguration", "KubeProxyConfiguration", "KubeletConfiguration"]
        );
    }

    #[test]
    fn summary_and_api_server_endpoint() {
        let summary = summarize(&render(default_config(), &values()).unwrap()).unwrap();
        assert_eq!(
            summary,
            Summary {
                kubernetes_version: Some("v1.20.2".into()),
                advertise_address: Some("192.168.122.10".into()),
                bind_port: 6443,
                control_plane_endpoint: None,
                image_repository: Some("sea.hub:5000".into()),
                cri_socket: Some(CONTAINERD_SOCKET.into()),
                cgroup_driver: Some("systemd".into()),
                pod_subnet: Some("10.244.0.0/16".into()),
                service_subnet: Some("10.96.0.0/22".into()),
                dns_domain: Some("cluster.local".into()),
            }
        );
        assert_eq!(summary.api_server_endpoint().as_deref(), Some("192.168.122.10:6443"));
        for (endpoint, want) in [
            ("apiserver.cluster.local", "apiserver.cluster.local:6443"),
            ("apiserver.cluster.local:8443", "apiserver.cluster.local:8443"),
            ("fd00::1", "[fd00::1]:6443"),
        ] {
            let summary = Summary { control_plane_endpoint: Some(endpoint.into()), ..summary.clone() };
            assert_eq!(summary.api_server_endpoint().as_deref(), Some(want));
        }
        let v6 = Summary { advertise_address: Some("fd00::2".into()), bind_port: 6443, ..Summary::default() };
        assert_eq!(v6.api_server_endpoint().as_deref(), Some("[fd00::2]:6443"));
    }

    #[test]
    fn garbage_never_panics() {
        const PIECES: &[&str] = &[
            "{{",
            "}}",
            "{{- ",
            " -}}",
            "-",
            " ",
            "\"",
            "`",
            "'",
            ".x",
            ".HostIP",
            "if ",
            "else ",
            "end",
            "(",
            ")",
            "|",
            ":",
            "\n",
            "/*",
            "*/",
            "µ",
            "---\n",
            "kind: InitConfiguration\n",
            "apiVersion: kubeadm.k8s.io/v1beta2\n",
            "kind: ClusterConfiguration\n",
            "networking:",
            "  podSubnet: ",
            "- ",
            "[",
            "]",
            "{",
            "}",
            "or ",
            "default ",
            "semverCompare ",
            "printf ",
            "\"%d\" ",
            "1",
            "-3",
            "\\",
            "&a ",
            "*a",
            "<<: ",
            "!tag ",
            "null",
            "~",
            "#",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let v = values();
        let base = render(default_config(), &v).unwrap();
        for _ in 0..3_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
            let _ = render(&text, &v);
            let _ = merge(&base, &text);
            let _ = merge(&text, &base);
            let _ = summarize(&text);
            if let Ok(rendered) = render(&text, &v) {
                assert_eq!(render(&rendered, &v).as_ref(), Ok(&rendered), "{text:?}");
            }
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("4m0s"), Some(240.0));
        assert_eq!(parse_go_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_go_duration("1.5s"), Some(1.5));
        assert_eq!(parse_go_duration("300ms"), Some(0.3));
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(format_go_duration(Duration::from_secs(20 * 60)), "20m0s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_secs(45)), "45s");
    }
}
