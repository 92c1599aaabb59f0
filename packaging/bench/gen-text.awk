# Writes the YAML, TOML, shell and Markdown files of the benchmark rootfs.
#
# Input: one line per file, tab-separated: KIND SIZE PATH SEED, where KIND is one of crd,
# k8s, values, chart, toml, sh, md. Each file gets documents of its kind until it holds at
# least SIZE bytes. The parent directories must exist.
#
# The output depends only on the input: the random numbers come from a Park-Miller
# generator in exact double arithmetic, not from rand(), whose sequence differs between awk
# implementations (mawk, gawk, busybox).

function rnd() {
    S = (S * 48271) % 2147483647
    return S
}

function ri(n) { return rnd() % n }

function word() { return W[ri(NW) + 1] }

function filler() { return F[ri(NF_) + 1] }

function hex(n,    s) {
    s = ""
    while (length(s) < n) s = s sprintf("%07x", rnd() % 268435456)
    return substr(s, 1, n)
}

function cap(s) { return toupper(substr(s, 1, 1)) substr(s, 2) }

function camel(n,    s, i) {
    s = word()
    for (i = 1; i < n; i++) s = s cap(word())
    return s
}

function kebab(n,    s, i) {
    s = word()
    for (i = 1; i < n; i++) s = s "-" word()
    return s
}

function sentence(    n, s, i) {
    n = 6 + ri(18)
    s = cap(word())
    for (i = 1; i < n; i++) s = s " " ((ri(3) == 0) ? filler() : word())
    return s "."
}

function para(k,    s, i) {
    s = sentence()
    for (i = 1; i < k; i++) s = s " " sentence()
    return s
}

function version() { return "v" ri(3) "." ri(32) "." ri(20) }

function image() {
    return "registry.local/" kebab(1) "/" kebab(1 + ri(2)) ":" version() "@sha256:" hex(64)
}

function out(line) {
    print line > PATH
    BYTES += length(line) + 1
}

# A long description folded like controller-gen output.
function describe(ind,    p, n, i, line, words) {
    p = para(1 + ri(3))
    n = split(p, words, " ")
    out(ind "description: |-")
    line = ""
    for (i = 1; i <= n; i++) {
        if (length(line) + length(words[i]) > 90) { out(ind "  " line); line = "" }
        line = (line == "") ? words[i] : line " " words[i]
    }
    if (line != "") out(ind "  " line)
}

# A mapping's keys are unique (YAML requires it; kubectl and kubeferry's image finder refuse a
# duplicate): a name drawn twice is skipped.
function schema(ind, depth,    n, i, t, name, seen) {
    n = 2 + ri(6)
    out(ind "properties:")
    for (i = 0; i < n; i++) {
        name = camel(1 + ri(3))
        if (name in seen) continue
        seen[name] = 1
        out(ind "  " name ":")
        describe(ind "    ")
        t = ri(10)
        if (depth < 5 && t < 3) {
            schema(ind "    ", depth + 1)
            out(ind "    type: object")
        } else if (depth < 5 && t == 3) {
            out(ind "    items:")
            schema(ind "      ", depth + 1)
            out(ind "      type: object")
            out(ind "    type: array")
        } else if (t == 4) {
            out(ind "    format: int" (ri(2) ? "32" : "64"))
            out(ind "    type: integer")
        } else if (t == 5) {
            out(ind "    type: boolean")
        } else if (t == 6) {
            out(ind "    enum:")
            out(ind "    - " cap(word()))
            out(ind "    - " cap(word()))
            out(ind "    type: string")
        } else {
            out(ind "    type: string")
        }
    }
    if (ri(3) == 0) {
        out(ind "required:")
        out(ind "- " camel(2))
    }
}

function crd(    kind, group, plural) {
    kind = cap(camel(1 + ri(2)))
    group = word() "." kebab(1) ".io"
    plural = tolower(kind) "s"
    out("---")
    out("apiVersion: apiextensions.k8s.io/v1")
    out("kind: CustomResourceDefinition")
    out("metadata:")
    out("  annotations:")
    out("    controller-gen.kubebuilder.io/version: v0." ri(17) "." ri(5))
    out("  name: " plural "." group)
    out("spec:")
    out("  group: " group)
    out("  names:")
    out("    kind: " kind)
    out("    listKind: " kind "List")
    out("    plural: " plural)
    out("    singular: " tolower(kind))
    out("  scope: " (ri(4) ? "Namespaced" : "Cluster"))
    out("  versions:")
    out("  - name: v1")
    out("    schema:")
    out("      openAPIV3Schema:")
    describe("        ")
    out("        properties:")
    out("          apiVersion:")
    out("            type: string")
    out("          kind:")
    out("            type: string")
    out("          metadata:")
    out("            type: object")
    out("          spec:")
    describe("            ")
    schema("            ", 1)
    out("            type: object")
    out("          status:")
    schema("            ", 2)
    out("            type: object")
    out("        type: object")
    out("    served: true")
    out("    storage: true")
    out("    subresources:")
    out("      status: {}")
}

function labels(ind, name) {
    out(ind "app.kubernetes.io/name: " name)
    out(ind "app.kubernetes.io/instance: " kebab(1))
    out(ind "app.kubernetes.io/version: " version())
    out(ind "app.kubernetes.io/component: " word())
}

function container(ind, name,    i, n) {
    out(ind "- name: " name)
    out(ind "  image: " image())
    out(ind "  imagePullPolicy: IfNotPresent")
    out(ind "  args:")
    n = 3 + ri(12)
    for (i = 0; i < n; i++) out(ind "  - --" kebab(1 + ri(3)) "=" ((ri(2)) ? ri(65536) : kebab(1 + ri(2))))
    out(ind "  env:")
    n = 1 + ri(6)
    for (i = 0; i < n; i++) {
        out(ind "  - name: " toupper(camel(1 + ri(2))))
        out(ind "    value: \"" ((ri(2)) ? ri(100000) : kebab(1 + ri(3))) "\"")
    }
    out(ind "  ports:")
    out(ind "  - containerPort: " (1024 + ri(60000)))
    out(ind "    name: " kebab(1))
    out(ind "    protocol: TCP")
    out(ind "  livenessProbe:")
    out(ind "    httpGet:")
    out(ind "      path: /" word())
    out(ind "      port: " (1024 + ri(60000)))
    out(ind "    initialDelaySeconds: " ri(60))
    out(ind "    periodSeconds: " (1 + ri(30)))
    out(ind "  resources:")
    out(ind "    limits:")
    out(ind "      cpu: " (100 * (1 + ri(40))) "m")
    out(ind "      memory: " (64 * (1 + ri(64))) "Mi")
    out(ind "    requests:")
    out(ind "      cpu: " (10 * (1 + ri(50))) "m")
    out(ind "      memory: " (16 * (1 + ri(64))) "Mi")
    out(ind "  volumeMounts:")
    out(ind "  - mountPath: /" kebab(1) "/" kebab(1 + ri(2)))
    out(ind "    name: " kebab(2))
}

function workload(    name, ns, t, i, n) {
    name = kebab(1 + ri(3))
    ns = kebab(1 + ri(2))
    t = ri(6)
    out("---")
    if (t == 0) {
        out("apiVersion: rbac.authorization.k8s.io/v1")
        out("kind: ClusterRole")
        out("metadata:")
        out("  name: " name)
        out("rules:")
        n = 2 + ri(10)
        for (i = 0; i < n; i++) {
            out("- apiGroups:")
            out("  - " ((ri(2)) ? "\"\"" : word() "." kebab(1) ".io"))
            out("  resources:")
            out("  - " word() "s")
            out("  - " word() "s/status")
            out("  verbs:")
            out("  - get")
            out("  - list")
            out("  - watch")
            if (ri(2)) { out("  - update"); out("  - patch") }
        }
    } else if (t == 1) {
        out("apiVersion: v1")
        out("kind: ConfigMap")
        out("metadata:")
        out("  name: " name)
        out("  namespace: " ns)
        out("data:")
        out("  " kebab(1) ".conf: |")
        n = 5 + ri(40)
        for (i = 0; i < n; i++) out("    " kebab(1 + ri(2)) " " ((ri(3)) ? ri(100000) : kebab(1 + ri(3))) ((ri(5)) ? "" : " # " sentence()))
    } else if (t == 2) {
        out("apiVersion: v1")
        out("kind: Service")
        out("metadata:")
        out("  name: " name)
        out("  namespace: " ns)
        out("  labels:")
        labels("    ", name)
        out("spec:")
        out("  type: ClusterIP")
        out("  ports:")
        out("  - name: " kebab(1))
        out("    port: " (1 + ri(65535)))
        out("    targetPort: " (1 + ri(65535)))
        out("  selector:")
        labels("    ", name)
    } else {
        out("apiVersion: apps/v1")
        out("kind: " ((t == 3) ? "DaemonSet" : "Deployment"))
        out("metadata:")
        out("  name: " name)
        out("  namespace: " ns)
        out("  labels:")
        labels("    ", name)
        out("spec:")
        out("  selector:")
        out("    matchLabels:")
        labels("      ", name)
        out("  template:")
        out("    metadata:")
        out("      annotations:")
        out("        checksum/config: " hex(64))
        out("      labels:")
        labels("        ", name)
        out("    spec:")
        out("      serviceAccountName: " name)
        out("      priorityClassName: system-" ((ri(2)) ? "node" : "cluster") "-critical")
        out("      tolerations:")
        out("      - key: node-role.kubernetes.io/control-plane")
        out("        operator: Exists")
        out("        effect: NoSchedule")
        out("      containers:")
        n = 1 + ri(3)
        for (i = 0; i < n; i++) container("      ", kebab(1 + ri(2)))
        out("      volumes:")
        out("      - name: " kebab(2))
        out("        hostPath:")
        out("          path: /var/lib/" kebab(1))
    }
}

# One values file is one mapping: its top-level keys (VALUES_KEYS, emptied per file) are unique.
function values(    i, n, j, key, inner) {
    n = 3 + ri(8)
    for (i = 0; i < n; i++) {
        out("# " sentence())
        key = camel(1 + ri(2))
        if (key in VALUES_KEYS) key = key length(VALUES_KEYS)
        VALUES_KEYS[key] = 1
        out(key ":")
        split("", inner)
        inner["image"] = 1
        for (j = 0; j < 2 + ri(6); j++) {
            out("  # " sentence())
            key = camel(1 + ri(2))
            if (key in inner) key = key j
            inner[key] = 1
            out("  " key ": " ((ri(3)) ? ri(10000) : "\"" kebab(1 + ri(2)) "\""))
        }
        out("  image:")
        out("    repository: registry.local/" kebab(1) "/" kebab(1 + ri(2)))
        out("    tag: " version())
        out("")
    }
}

function chart(    i, n) {
    # A Helm template: Go templating around Kubernetes YAML.
    out("{{- if .Values." camel(2) ".enabled }}")
    workload()
    out("{{- with .Values." camel(2) " }}")
    out("  " camel(1) ": {{ toYaml . | nindent 4 }}")
    out("{{- end }}")
    out("{{- end }}")
}

function toml(    i, n) {
    out("")
    out("[plugins.\"io.containerd.grpc.v1." word() "\"." kebab(1) "]")
    n = 3 + ri(12)
    for (i = 0; i < n; i++) {
        if (ri(4) == 0) out("  # " sentence())
        out("  " kebab(1 + ri(2)) " = " ((ri(2)) ? ri(100000) : "\"" kebab(1 + ri(3)) "\""))
    }
}

function sh(    i, n) {
    out("")
    out("# " sentence())
    out(camel(2) "() {")
    n = 3 + ri(14)
    for (i = 0; i < n; i++) {
        t = ri(5)
        if (t == 0) out("  local " word() "=\"${" (1 + ri(3)) ":-" kebab(1) "}\"")
        else if (t == 1) out("  if [ -f \"/etc/" kebab(1) "/" word() ".conf\" ]; then " camel(2) " \"$" word() "\" || return 1; fi")
        else if (t == 2) out("  echo \"" sentence() "\" >&2")
        else if (t == 3) out("  systemctl " ((ri(2)) ? "restart" : "enable --now") " " kebab(1) ".service")
        else out("  " kebab(1) " --" kebab(2) "=\"$" toupper(word()) "\" --" kebab(1) " " ri(1000))
    }
    out("}")
}

function md(    i, n) {
    out("")
    out("## " cap(word()) " " word() " " word())
    out("")
    out(para(2 + ri(5)))
    out("")
    if (ri(3) == 0) {
        out("```bash")
        out(kebab(1) " " word() " --" kebab(2) "=" ri(1000) " /etc/" kebab(1) "/" word() ".yaml")
        out("```")
        out("")
    }
    n = ri(5)
    for (i = 0; i < n; i++) out("- " sentence())
}

BEGIN {
    FS = "\t"
    nw = split("container pod node cluster service endpoint controller replica deployment " \
        "volume claim storage class network policy ingress egress port protocol selector " \
        "label annotation namespace secret config map token certificate authority kubelet " \
        "proxy scheduler manager etcd member peer client server health probe liveness " \
        "readiness startup resource limit request memory cpu ephemeral image pull registry " \
        "mirror tag digest layer runtime sandbox cgroup driver systemd log level verbosity " \
        "timeout interval retry backoff threshold period seconds update strategy rolling " \
        "surge unavailable revision history affinity toleration taint effect schedule " \
        "priority preemption quota admission webhook mutating validating conversion " \
        "version group kind spec status condition reason message observed generation " \
        "finalizer owner reference uid address route gateway listener backend tls cipher " \
        "key issuer subject lease lock leader election queue worker cache informer watch " \
        "list patch apply field manager metric exporter scrape target alert rule record " \
        "dashboard panel query series retention shard block chunk compaction snapshot " \
        "backup restore migration upgrade rollback hook job cron schedule template chart " \
        "release value override default profile feature gate flag option parameter " \
        "interface bridge tunnel overlay vxlan bgp peer mesh sidecar envoy filter cluster " \
        "zone region topology spread disruption budget eviction drain cordon mount path " \
        "socket device plugin driver csi snapshotter attacher provisioner resizer encryption " \
        "audit event trace span sampler collector pipeline processor batch buffer flush " \
        "compression level format encoding json yaml proto grpc http header cookie session " \
        "identity account role binding permission verb scope audience expiry rotation", W, " ")
    NW = nw
    nf = split("the a of to and is in that for it with as on be by this are or if when must " \
        "should may will can not which from field value specifies defaults used only each " \
        "more than one all any set this none empty otherwise unless after before between " \
        "within across per note that see also deprecated optional required", F, " ")
    NF_ = nf
}

{
    KIND = $1
    SIZE = $2 + 0
    PATH = $3
    S = ($4 % 2147483646) + 1
    BYTES = 0
    split("", VALUES_KEYS)
    if (KIND == "crd" || KIND == "k8s") { out("# Source: " kebab(2) "/templates/" kebab(1) ".yaml") }
    if (KIND == "sh") { out("#!/usr/bin/env bash"); out("set -euo pipefail") }
    if (KIND == "md") { out("# " cap(kebab(2))) }
    while (BYTES < SIZE) {
        if (KIND == "crd") crd()
        else if (KIND == "k8s") workload()
        else if (KIND == "values") values()
        else if (KIND == "chart") chart()
        else if (KIND == "toml") toml()
        else if (KIND == "sh") sh()
        else md()
    }
    close(PATH)
}
