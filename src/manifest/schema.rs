//! The manifest schema: what a `kib/v1` YAML file may contain.
//!
//! Every struct denies unknown fields, so a typo is an error that names the file, line and column
//! (see [`super::load`]). Strings may use `${name}` to refer to a variable; they are expanded just
//! before a step runs, when the image's facts (`${arch}`, `${os_id}`, ...) are known. `$${` writes
//! a literal `${`. `run` scripts are not expanded: they receive the variables as environment
//! variables of the same name, so `${kubernetes_version}` works there with the shell's own syntax.

use indexmap::IndexMap;
use serde::Deserialize;

/// One YAML file: a complete image manifest, or a phase that manifests include.
#[derive(Debug, schemars::JsonSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Must be `kib/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `ImageManifest` for a buildable image, `Phase` for an includable building block.
    pub kind: Kind,
    #[serde(default)]
    pub metadata: Metadata,
    /// Default values of variables. The including file's values override an included file's, and
    /// `--set name=value` overrides both. Values are strings: quote versions (`"1.30"`).
    #[serde(default)]
    pub variables: IndexMap<String, String>,
    /// Phase files whose steps run before this file's own steps, in this order. A path is looked up
    /// relative to this file's folder, then relative to each folder above it.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Only in an `ImageManifest`.
    pub output: Option<Output>,
    /// Only in an `ImageManifest`. Phase 2's clean-up of machine identity; on by default.
    pub sysprep: Option<Sysprep>,
    /// Only in an `ImageManifest`. The built image's disk.
    pub disk: Option<Disk>,
    /// Only in an `ImageManifest`. How `packages` steps run.
    pub packages: Option<PackageSettings>,
    /// In an `ImageManifest`: the name of the provider profile to apply
    /// (`phases/providers/<name>.yaml`, or a profile whose `aliases` list the name); `--provider`
    /// overrides. In a `Phase` file: the file *is* a provider profile, and this says what kib
    /// needs to know about the platform ([`ProviderProfile`]).
    pub provider: Option<ProviderField>,
}

/// `provider:` is a name in an `ImageManifest` and a [`ProviderProfile`] in a `Phase` file.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(untagged)]
pub enum ProviderField {
    Name(String),
    Profile(ProviderProfile),
}

/// The `provider:` section of a provider profile (`phases/providers/<name>.yaml`).
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderProfile {
    /// The name `--provider` and a manifest's `provider:` take: the file's stem.
    pub name: String,
    /// Other names accepted for it (`vsphere` for `ova`, EKS Anywhere's `--hypervisor` words).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The formats the platform imports: the default output formats of a build with this
    /// provider when `--format` is not given.
    #[serde(default)]
    pub formats: Vec<crate::format::Format>,
    /// Boot firmware the platform supports: `bios`, `uefi`. An image that boots only with
    /// another is refused after Phase 0. Empty: any.
    #[serde(default)]
    pub firmware: Vec<Firmware>,
    /// Architectures the platform runs (`amd64`, `arm64`, ...). An image of another is refused
    /// after Phase 0. Empty: any.
    #[serde(default)]
    pub arches: Vec<String>,
}

/// A boot firmware.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

#[derive(Debug, schemars::JsonSchema, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ImageManifest,
    Phase,
}

#[derive(Debug, Default, schemars::JsonSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The image's name: the output files are `<name>.<format>`. Defaults to the file's stem.
    pub name: Option<String>,
    pub description: Option<String>,
}

/// One step of Phase 1. It has a `name` and exactly one action key.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// Run the step only when the image matches.
    pub when: Option<When>,
    /// How long the step may run before kib stops it, such as `90s`, `10m` or `1h`.
    /// Default: 30 minutes.
    pub timeout: Option<String>,
    pub packages: Option<Packages>,
    pub file: Option<FileStep>,
    pub run: Option<RunStep>,
    pub systemd: Option<SystemdStep>,
    pub sysctl: Option<SysctlStep>,
    #[serde(rename = "kernel-modules")]
    pub kernel_modules: Option<KernelModulesStep>,
    pub download: Option<DownloadStep>,
    pub repository: Option<RepositoryStep>,
    pub images: Option<ImagesStep>,
}

/// Conditions on the image, all of which must hold.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// os-release `ID` values, such as `debian` or `ubuntu`; `ID_LIKE` counts too.
    #[serde(default)]
    pub os: Vec<String>,
    /// Debian-style architecture names, such as `amd64` or `arm64`.
    #[serde(default)]
    pub arch: Vec<String>,
    /// Variable values: the step runs only if each named variable equals the given string (for
    /// choosing, say, between `kubernetes_source: pkg` and `http`).
    #[serde(default)]
    pub variables: IndexMap<String, String>,
}

/// `packages`: install, remove and hold packages with the image's own package manager (apt on
/// Debian-family images). Needs the image's package manager and its repositories reachable.
/// Writes whatever the packages contain; kib records the resulting package list in the BOM.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Refresh the package lists first. Default: true when `install` is not empty and no earlier
    /// step of this build refreshed them since the last `repository` step.
    pub update: Option<bool>,
    /// Package names, optionally pinned: `containerd` or `containerd=1.6.20~ds1-1+b1`.
    #[serde(default)]
    pub install: Vec<String>,
    /// Package names to remove (configuration files are kept; see `purge`).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Package names to purge, configuration files included.
    #[serde(default)]
    pub purge: Vec<String>,
    /// Package names to hold at their installed version (`apt-mark hold`).
    #[serde(default)]
    pub hold: Vec<String>,
    /// Install recommended packages too. Default: false.
    #[serde(default)]
    pub recommends: bool,
}

/// `file`: writes one regular file into the image, from inline `content` or a `source` file on the
/// build host (relative to the YAML file that names it). Missing parent folders are created
/// (mode 0755, root). The path is resolved inside the image root: a symlink in the image can
/// not make kib write outside it. Needs `/etc/passwd` and `/etc/group` in the image when `owner`
/// uses names.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileStep {
    /// Absolute path inside the image.
    pub path: String,
    pub content: Option<String>,
    pub source: Option<String>,
    /// Octal permission bits as a string, such as `"0644"` (the default).
    pub mode: Option<String>,
    /// `user:group`, by name (looked up in the image) or number. Default `root:root` (0:0).
    pub owner: Option<String>,
}

/// `run`: a script run by `shell` inside the chroot, in its own PID namespace, with the manifest's
/// variables in its environment. Needs the shell in the image.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RunStep {
    pub script: String,
    /// Default `/bin/sh -e` semantics: kib runs `<shell> -ec <script>`.
    pub shell: Option<String>,
}

/// `systemd`: enables, disables and masks units offline, with the image's own `systemctl` in the
/// chroot (no unit is started). Needs systemd in the image.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct SystemdStep {
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
    #[serde(default)]
    pub unmask: Vec<String>,
}

/// `sysctl`: writes `/etc/sysctl.d/<file>` with one `key = value` line per setting, in order.
/// Needs nothing from the image; systemd-sysctl applies it at boot.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SysctlStep {
    /// File name inside /etc/sysctl.d, such as `99-kubernetes.conf`.
    pub file: String,
    pub settings: IndexMap<String, String>,
}

/// `kernel-modules`: writes `/etc/modules-load.d/<file>` listing modules to load at boot, and
/// `/etc/modprobe.d/<file>` when `options` are given. Needs nothing from the image.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct KernelModulesStep {
    /// File name, such as `kubernetes.conf`.
    pub file: String,
    #[serde(default)]
    pub load: Vec<String>,
    /// Module name to its options string (`options <module> <options>` lines).
    #[serde(default)]
    pub options: IndexMap<String, String>,
}

/// `download`: fetches a file through kib's fetcher (the mirror map, the content-addressed cache
/// and SHA-256 verification; see `kib fetch` and `--offline`) and writes it into the image,
/// either as one file (`path`) or unpacked from a `.tar`, `.tar.gz` or `.tgz` archive
/// (`extract`, a folder). Extracted files are owned by root; hard links, devices and paths with
/// `..` are refused. Needs nothing from the image: the download happens on the build host.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DownloadStep {
    /// The upstream URL, such as `https://dl.k8s.io/release/v${kubernetes_version}/bin/linux/${arch}/kubelet`.
    pub url: String,
    /// The expected SHA-256 (64 hex digits), or a map from architecture to it. Give this or
    /// `sha256_url`.
    pub sha256: Option<Sha256Spec>,
    /// A URL publishing the SHA-256 (a bare digest, or `sha256sum` lines naming the file), such
    /// as upstream's `<url>.sha256`. Fetched through the mirror map and cached for offline use.
    pub sha256_url: Option<String>,
    /// Absolute image path to write the file to. Give this or `extract`.
    pub path: Option<String>,
    /// Absolute image folder to unpack the archive into.
    pub extract: Option<String>,
    /// With `extract`: leading path components to drop from each entry, as tar's option does.
    #[serde(default)]
    pub strip_components: usize,
    /// With `path`: octal mode; default `"0755"` (downloads are mostly executables).
    pub mode: Option<String>,
}

/// A pinned SHA-256: one for every architecture, or one per architecture
/// (`{amd64: "...", arm64: "..."}`).
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(untagged)]
pub enum Sha256Spec {
    One(String),
    PerArch(IndexMap<String, String>),
}

impl Sha256Spec {
    /// The sum for `arch`. Errors when a per-arch map lacks it.
    pub fn for_arch(&self, arch: &str) -> Result<String, String> {
        match self {
            Sha256Spec::One(s) => Ok(s.clone()),
            Sha256Spec::PerArch(m) => m.get(arch).cloned().ok_or_else(|| {
                format!("no sha256 for architecture `{arch}` (the manifest pins: {})", m.keys().cloned().collect::<Vec<_>>().join(", "))
            }),
        }
    }
}

/// `repository`: adds a package repository with its signing key, in the form of the image's
/// package manager. The key is fetched through the mirror map and cache.
///
/// - apt: writes `/etc/apt/keyrings/<name>.asc` (the ASCII-armored key) and
///   `/etc/apt/sources.list.d/<name>.list`
///   (`deb [signed-by=/etc/apt/keyrings/<name>.asc] <url> <suite> <components>`).
/// - dnf, yum, tdnf (`/etc/yum.repos.d/<name>.repo`) and zypper (`/etc/zypp/repos.d/<name>.repo`):
///   writes the key to `/etc/pki/rpm-gpg/<name>.asc`, imports it into the rpm database with the
///   image's `rpm --import`, and a `.repo` file with `baseurl=<url>`, `gpgcheck=1`,
///   `gpgkey=file:///etc/pki/rpm-gpg/<name>.asc` and `exclude=` the `exclude` list (dnf/yum
///   lift it for the packages a `packages` step names: upstream's way of holding kubelet,
///   kubeadm and kubectl). `suite` and `components` are apt's only.
///
/// The next `packages` step refreshes the package lists. Needs the image's package manager
/// (and, for RPM images, its rpm).
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RepositoryStep {
    /// A plain name for the files, such as `kubernetes`.
    pub name: String,
    /// The repository URL, such as `https://pkgs.k8s.io/core:/stable:/v1.30/deb/`. It is
    /// written into the image as given; during the build, the mirror map applies.
    pub url: String,
    /// The suite; `/` (the default) for a flat repository such as pkgs.k8s.io's.
    pub suite: Option<String>,
    #[serde(default)]
    pub components: Vec<String>,
    /// Where the ASCII-armored signing key is published. Give this or `key`.
    pub key_url: Option<String>,
    /// The key's SHA-256. Without it, the key is fetched unpinned and its SHA-256 is recorded
    /// in the BOM (a warning says so).
    pub key_sha256: Option<String>,
    /// The ASCII-armored key itself, inline.
    pub key: Option<String>,
    /// RPM images: package names (or globs) the repository's `exclude=` keeps from being
    /// installed or upgraded, except by a `packages` step that names them.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `images`: pre-loads container images into containerd's store in the image, offline. Each
/// archive (docker-archive or OCI tar) is fetched through the mirror map and cache, copied into
/// the image, and imported with the image's own `ctr` while the image's own `containerd` runs
/// inside the chroot, in the step's PID namespace; containerd is stopped afterwards and nothing
/// keeps running. Needs containerd and ctr in the image. Records each image's name and digest
/// in the BOM.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ImagesStep {
    /// containerd namespace; `k8s.io` (the default) is the one the kubelet's CRI uses.
    pub namespace: Option<String>,
    pub archives: Vec<ImageArchive>,
}

/// One image archive to pre-load.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ImageArchive {
    pub url: String,
    pub sha256: Option<Sha256Spec>,
    pub sha256_url: Option<String>,
    /// The name the image should have in the store, when the archive names it otherwise
    /// (dl.k8s.io's `kube-apiserver.tar` says `registry.k8s.io/kube-apiserver-amd64:vX`, kubeadm
    /// looks for `registry.k8s.io/kube-apiserver:vX`). The archive's own name is replaced.
    pub tag: Option<String>,
}

/// The built image's disk.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// The disk's virtual size, such as `20GiB` or `8G` (K, M, G, T are powers of 1024; `GB`
    /// too, as qemu-img reads it), rounded up to a whole MiB. Before Phase 1, kib grows the
    /// working copy to it, moves the GPT backup header to the new end, and grows the root
    /// partition (which must be the last one on the disk) and its filesystem (ext2/3/4, xfs or
    /// btrfs). Data never moves. Smaller than the input is an error: kib never shrinks a disk.
    /// `--disk-size` overrides.
    pub size: Option<String>,
}

/// Phase 2's artifacts.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Formats to write, such as `[qcow2, raw]`: raw, qcow2, vmdk, ova, vhd, vhdx, raw.zst,
    /// raw.gz, gce. `--format` overrides. Default: `[qcow2]`.
    #[serde(default)]
    pub formats: Vec<crate::format::Format>,
    /// qcow2 compression: `none` (default), `zlib` or `zstd`.
    pub qcow2_compression: Option<crate::format::Qcow2Compression>,
}

/// How `packages` steps run (`packages:` at the top of an ImageManifest).
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct PackageSettings {
    /// The package manager to use, instead of the one kib detects from the image's os-release
    /// and tools: `apt`, `dnf`, `yum`, `tdnf` or `zypper`. The image must have it.
    pub manager: Option<ManagerKind>,
}

/// A package manager kib knows (see `crate::pkg`).
#[derive(Debug, schemars::JsonSchema, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ManagerKind {
    /// apt-get and dpkg: Debian, Ubuntu.
    Apt,
    /// dnf (or microdnf): RHEL 8+, Rocky, Alma, CentOS Stream, Oracle Linux, Fedora, Amazon Linux 2023.
    Dnf,
    /// yum: RHEL 7, Amazon Linux 2.
    Yum,
    /// tdnf: Photon OS, Azure Linux.
    Tdnf,
    /// zypper: SLES, openSUSE.
    Zypper,
}

impl std::fmt::Display for ManagerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ManagerKind::Apt => "apt",
            ManagerKind::Dnf => "dnf",
            ManagerKind::Yum => "yum",
            ManagerKind::Tdnf => "tdnf",
            ManagerKind::Zypper => "zypper",
        })
    }
}

/// Phase 2's sysprep: which operations run. All run unless listed in `skip`.
#[derive(Debug, schemars::JsonSchema, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Sysprep {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Operation names to leave out (see `kib sysprep-operations`).
    #[serde(default)]
    pub skip: Vec<String>,
}

impl Default for Sysprep {
    fn default() -> Self {
        Sysprep { enabled: true, skip: Vec::new() }
    }
}

fn yes() -> bool {
    true
}
