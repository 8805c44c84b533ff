//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::format::{Format, Qcow2Compression};

/// kib: Kubernetes node images from an existing bootable disk image and a manifest, built
/// offline in a chroot. No VM is booted.
#[derive(Debug, Parser)]
#[command(name = "kib", version, about, propagate_version = true)]
pub struct Cli {
    /// More output: -v shows the output of every command kib runs, -vv debug details.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// How to print results: `text` for people (on a terminal, live progress bars and a summary;
    /// in a pipe or with NO_COLOR, plain lines), `json` for programs (`customize` streams
    /// JSON-lines events, see the README; other commands print one JSON document).
    #[arg(long, global = true, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Also write the log, with timestamps and the output of every command kib runs, to FILE
    /// (appended).
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

// The arguments are parsed once; boxing the larger ones would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the three phases: attach and mount the image, run the manifest's steps in a chroot,
    /// then sysprep, write the BOM and convert to the output formats (--phases runs some of
    /// them). Needs root.
    Customize(CustomizeArgs),
    /// Open a shell, or run one command, inside an image: Phase 0 on a working copy, then the
    /// chroot session the steps use. The input is never modified; --save keeps the result as a
    /// raw disk for `kib customize --phases 2`. Exits with the command's status. Needs root.
    Shell(ShellArgs),
    /// Load a manifest with its includes and variables, check it, and list its steps. Touches
    /// no image and needs no root.
    Validate(ValidateArgs),
    /// List the sysprep operations that `sysprep.skip` can name.
    SysprepOperations(SysprepOperationsArgs),
    /// Check a built image offline, read-only: no SSH host keys, an empty machine-id, and, with
    /// a manifest, everything it says (packages and holds, services, sysctls, modules, files,
    /// downloads, repositories, pre-loaded images). Exits non-zero when a check fails. Needs root.
    Check(CheckArgs),
    /// Show what an image holds, read-only: os-release and architecture, the partition table and
    /// filesystems, kernels, Kubernetes components, installed packages. Any image, kib's or not.
    /// With --sbom, an SPDX or CycloneDX SBOM of it instead. Needs root.
    Inspect(InspectArgs),
    /// Remove what crashed or killed runs left: work directories whose kib process is gone, and
    /// loop devices backed by files in them. Reports what it removed. Needs root.
    Cleanup(CleanupArgs),
    /// EKS Anywhere's entry point: pick a base image from the OS catalogue (bases/catalogue.yaml),
    /// the release channel's manifest and a provider profile, then run customize. The base is
    /// downloaded through the mirror map and the cache and verified against its checksum list
    /// (sha256 or sha512, GNU or BSD lines) first. Needs root.
    Build(BuildArgs),
    /// Download every artifact a manifest needs (`download` files, repository keys, image
    /// archives, checksum files) into the cache, so that an air-gapped host (given the cache
    /// folder, say on a USB disk) can build with --offline.
    Fetch(FetchArgs),
    /// Image matrices (`kind: ImageMatrix`): list the builds with their keys (plan), run them on
    /// this host, N at a time (run), or write a Kubernetes Indexed Job or an Argo Workflow whose
    /// pods each run one (render). Each build is one `kib customize`.
    #[command(subcommand)]
    Matrix(MatrixCommand),
    /// Print a shell completion script for bash, zsh or fish: `kib completions bash >
    /// /etc/bash_completion.d/kib`.
    Completions(CompletionsArgs),
    /// Print kib's man page (roff): `kib man > /usr/share/man/man1/kib.1`.
    Man(ManArgs),
    /// Print the JSON Schema of kib manifests and phase files, derived from the types kib reads
    /// them with. Editors use it for completion and checking (see the README's modeline).
    Schema(SchemaArgs),
    /// The build cache of Phase 1 snapshots (see `customize --no-cache`): list them (ls) or evict
    /// the least recently used (prune).
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the snapshots: key, manifest, the step after which it was taken, size on disk, last
    /// use and age, most recently used first.
    Ls(CacheLsArgs),
    /// Evict the least recently used snapshots until the build cache holds at most --max-size
    /// (default: the customize default), or all of them with --all; also removes what killed
    /// builds left half-written. Needs write access to the cache folder.
    Prune(CachePruneArgs),
}

/// Which cache folder `kib cache` works on.
#[derive(Debug, Args)]
pub struct CacheDirOptions {
    /// kib's cache folder (the build cache is its `build/`). Default: the configuration's
    /// cache_dir, else /var/cache/kib.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// kib's configuration file. Default /etc/kib/config.yaml, if it exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CacheLsArgs {
    #[command(flatten)]
    pub dir: CacheDirOptions,
}

#[derive(Debug, Args)]
pub struct CachePruneArgs {
    #[command(flatten)]
    pub dir: CacheDirOptions,
    /// Keep at most this much (allocated on disk; binary units such as 20GiB, or 0).
    #[arg(long, value_name = "SIZE", default_value = crate::buildcache::DEFAULT_MAX_SIZE, conflicts_with = "all")]
    pub max_size: String,
    /// Remove every snapshot.
    #[arg(long)]
    pub all: bool,
}

/// How a build uses the build cache (customize and build).
#[derive(Debug, Clone, Args)]
pub struct BuildCacheOptions {
    /// Do not use the build cache: no snapshot is reused and none is stored. Also how to pick up
    /// new package versions: `packages` steps without pinned versions are cached by their
    /// inputs like any other step (see --refresh).
    #[arg(long)]
    pub no_cache: bool,
    /// Reuse snapshots only from before the first `packages` step: it and every later step run
    /// again, so that apt (dnf, zypper) installs what the repositories have today. Snapshots are
    /// still stored.
    #[arg(long, conflicts_with = "no_cache")]
    pub refresh: bool,
    /// Snapshot the disk after steps that took at least this many seconds, and always after
    /// the last step.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::buildcache::DEFAULT_MIN_SECONDS)]
    pub cache_min_seconds: f64,
    /// After storing a snapshot, evict the least recently used ones until the build cache
    /// (`<cache-dir>/build`) holds at most this much (allocated on disk, binary units).
    #[arg(long, value_name = "SIZE", default_value = crate::buildcache::DEFAULT_MAX_SIZE)]
    pub cache_max_size: String,
}

impl Default for BuildCacheOptions {
    fn default() -> Self {
        BuildCacheOptions { no_cache: false, refresh: false, cache_min_seconds: crate::buildcache::DEFAULT_MIN_SECONDS, cache_max_size: crate::buildcache::DEFAULT_MAX_SIZE.into() }
    }
}

#[derive(Debug, Subcommand)]
pub enum MatrixCommand {
    /// Expand and check a matrix, and list every build: index, name, build key, and whether its
    /// outputs are up to date. Needs no root and touches no image.
    Plan(MatrixPlanArgs),
    /// Run a matrix's builds on this host, each a `kib customize` child process with its own log
    /// and output folder, sharing one cache; skip the up-to-date ones. Prints a table and writes
    /// matrix.json; exits non-zero when a build failed. Needs root.
    Run(MatrixRunArgs),
    /// Write YAML that runs the matrix on Kubernetes (a ConfigMap and an Indexed Job) or Argo (a
    /// ConfigMap and a Workflow), each pod running `kib matrix run --index I`.
    Render(MatrixRenderArgs),
}

/// Where a matrix's builds go: shared by plan, run and render.
#[derive(Debug, Args)]
pub struct MatrixOutputOptions {
    /// The output root (each build in `<DIR>/<name>/`, logs in `<DIR>/logs/`, `<DIR>/matrix.json`).
    /// Overrides the matrix's output.dir (default out/matrix).
    #[arg(short, long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// kib's cache folder, shared by every build (downloads, checksum lists, input checksums).
    /// Default: the configuration's cache_dir, else /var/cache/kib for root and ~/.cache/kib for a
    /// normal user.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// kib's configuration file (mirrors, offline), for the plan's checksum lists and passed to
    /// every build. Default /etc/kib/config.yaml, if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MatrixPlanArgs {
    /// The matrix file (YAML, apiVersion kib/v1, kind ImageMatrix).
    pub file: PathBuf,
    #[command(flatten)]
    pub out: MatrixOutputOptions,
}

#[derive(Debug, Args)]
pub struct MatrixRunArgs {
    /// The matrix file.
    pub file: PathBuf,
    #[command(flatten)]
    pub out: MatrixOutputOptions,
    /// How many builds run at once.
    #[arg(short, long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: u32,
    /// Only the builds whose names match this glob (`*`, `?`), such as `*-arm64`.
    #[arg(long, value_name = "PATTERN", conflicts_with = "index")]
    pub only: Option<String>,
    /// Only build I of the plan (0-based, as `kib matrix plan` numbers them; with --arch, the
    /// I-th of that architecture's builds): what the pod of a Kubernetes Indexed Job runs, with
    /// I = $JOB_COMPLETION_INDEX, which it is read from when that is set (a Job's pod).
    #[arg(long, value_name = "I", env = "JOB_COMPLETION_INDEX")]
    pub index: Option<usize>,
    /// Only the builds of this architecture.
    #[arg(long, value_enum)]
    pub arch: Option<crate::matrix::Arch>,
    /// Rebuild even the up-to-date builds.
    #[arg(long)]
    pub force: bool,
    /// Where each build's work directory is created (its --work-dir).
    #[arg(long, value_name = "DIR", default_value_os_t = crate::config::default_work_dir())]
    pub work_dir: PathBuf,
    /// How many format conversions each build runs at once (its --convert-jobs). Default: the
    /// number of CPUs divided by --jobs, at least 1.
    #[arg(long, value_name = "N")]
    pub convert_jobs: Option<usize>,
    /// How each build reaches its image's filesystems (its --backend): loop devices (root),
    /// libguestfs's appliance (no root), or auto: loop for root with /dev/loop-control, guestfs
    /// otherwise.
    #[arg(long, value_enum, default_value_t = crate::backend::BackendArg::Auto)]
    pub backend: crate::backend::BackendArg,
    /// guestfs backend: each build's --appliance-timeout, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub appliance_timeout: u64,
}

/// What `kib matrix render` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RenderTarget {
    /// A ConfigMap and an Indexed Job (batch/v1).
    Kubernetes,
    /// A ConfigMap and an Argo Workflow (argoproj.io/v1alpha1).
    Argo,
}

#[derive(Debug, Args)]
pub struct MatrixRenderArgs {
    /// The matrix file.
    pub file: PathBuf,
    /// What to write for.
    #[arg(long, value_enum)]
    pub target: RenderTarget,
    /// The kib container image the pods run (see scripts/make-container-image.sh).
    #[arg(long, value_name = "IMAGE", default_value = "localhost/kib:latest")]
    pub image: String,
    /// How many builds run at once (the Job's parallelism, the Workflow's parallelism).
    #[arg(short, long, value_name = "N", default_value_t = 2)]
    pub jobs: u32,
    /// The PersistentVolumeClaim mounted at /var/cache/kib in every pod: kib's cache, and the
    /// base images (a base `path` must lie under /var/cache/kib).
    #[arg(long, value_name = "NAME", default_value = "kib-cache")]
    pub cache_pvc: String,
    /// The PersistentVolumeClaim the outputs go to (mounted at /out).
    #[arg(long, value_name = "NAME", default_value = "kib-output")]
    pub output_pvc: String,
    /// Run every build on amd64 nodes (arm64 ones under qemu-user) instead of selecting nodes by
    /// `kubernetes.io/arch`.
    #[arg(long)]
    pub emulate_foreign: bool,
    /// The output root whose matrix.json (from earlier `kib matrix run`s) sizes the pods'
    /// resource requests; default: the matrix's output.dir.
    #[arg(long, value_name = "DIR")]
    pub measured: Option<PathBuf>,
    /// Retries per build (the Job's backoffLimitPerIndex, the Workflow step's retryStrategy).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub retries: u32,
    /// Write the YAML to FILE (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `kib man` takes no arguments.
#[derive(Debug, Args)]
pub struct ManArgs {}

/// `kib schema` takes no arguments.
#[derive(Debug, Args)]
pub struct SchemaArgs {}

/// How a command prints its result: `text` for people, `json` for programs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Plain text lines.
    #[default]
    Text,
    /// One pretty-printed JSON document.
    Json,
}

/// `kib sysprep-operations` takes no arguments.
#[derive(Debug, Args)]
pub struct SysprepOperationsArgs {}

/// Where downloads come from: shared by customize and fetch.
#[derive(Debug, Args)]
pub struct FetchOptions {
    /// Rewrite URLs starting with FROM to start with TO instead (longest prefix wins), for
    /// mirrors: --mirror https://dl.k8s.io=http://mirror.local/k8s. Repeatable; added to the
    /// configuration file's `mirrors`.
    #[arg(long, value_name = "FROM=TO")]
    pub mirror: Vec<String>,
    /// Download nothing: every artifact must already be in the cache. A build that lacks some
    /// stops before its first step and lists all of them.
    #[arg(long)]
    pub offline: bool,
    /// kib's cache folder: downloads by SHA-256, checksum files, and the checksums of input
    /// images already read in full. Default: the configuration's cache_dir, else /var/cache/kib.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// kib's configuration file (mirrors, cache_dir, offline). Default /etc/kib/config.yaml, if
    /// it exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// How many times a download that fails without progress (408, 429 or 5xx answers,
    /// connection resets, time-outs) is retried, waiting 1, 2, 4, … s (or the server's
    /// Retry-After). A transfer that was cut after making progress resumes where it stopped (HTTP
    /// Range) without using one up. 0: no retries, and no resume.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub fetch_retries: u32,
    /// Let the package manager download into the image's own caches instead of kib's shared
    /// package cache (<cache dir>/packages, bound into the image while the steps run), so that
    /// every package and index is fetched again.
    #[arg(long)]
    pub no_package_cache: bool,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The manifest whose downloads to fetch.
    #[arg(long, value_name = "PATH", required_unless_present = "disk_image")]
    pub manifest: Option<PathBuf>,
    /// Also fetch this base image (an http://, https:// or file:// URL) into the cache, verified
    /// as `kib customize --disk-image URL` verifies it, so that a build from the same URL (with
    /// --offline too) downloads nothing.
    #[arg(long, value_name = "URL")]
    pub disk_image: Option<String>,
    /// The SHA-256 the --disk-image must have, instead of a checksum list beside it.
    #[arg(long, value_name = "HEX", requires = "disk_image")]
    pub disk_image_sha256: Option<String>,
    /// Apply a provider profile, phases/providers/NAME.yaml (or a profile that lists NAME among
    /// its aliases, such as vsphere for ova), after the manifest's includes. Overrides the
    /// manifest's `provider:`.
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Override a manifest variable, as for customize.
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// The image architecture to fetch for (`${arch}`): amd64, arm64, ... Default: the host's.
    #[arg(long)]
    pub arch: Option<String>,
    #[command(flatten)]
    pub fetch: FetchOptions,
}

/// EKS Anywhere's `--hypervisor` values, each a provider profile's alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Hypervisor {
    /// VMware vSphere: the `ova` profile.
    Vsphere,
    /// Bare metal (Tinkerbell): the `raw` profile.
    Baremetal,
    /// Nutanix AHV: the `nutanix` profile.
    Nutanix,
}

impl Hypervisor {
    /// The provider name it stands for (an alias of a shipped profile).
    pub fn provider(self) -> &'static str {
        match self {
            Hypervisor::Vsphere => "vsphere",
            Hypervisor::Baremetal => "baremetal",
            Hypervisor::Nutanix => "nutanix",
        }
    }
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The operating system: a key or alias of the OS catalogue, such as ubuntu-24.04,
    /// debian-12, rocky-9.
    #[arg(long, value_name = "OS")]
    pub os: String,
    /// The provider profile (phases/providers/NAME.yaml or an alias, such as qemu, vsphere).
    #[arg(long, value_name = "NAME", required_unless_present = "hypervisor", conflicts_with = "hypervisor")]
    pub provider: Option<String>,
    /// EKS Anywhere's word for the provider.
    #[arg(long, value_enum)]
    pub hypervisor: Option<Hypervisor>,
    /// The Kubernetes release channel, such as 1-30 (manifests/k8s-1.30.yaml).
    #[arg(long, value_name = "CHANNEL")]
    pub release_channel: String,
    /// Use this base image (a path, or an http(s) URL verified against the SHA256SUMS beside
    /// it) instead of the catalogue's.
    #[arg(long, value_name = "PATH|URL")]
    pub base_image: Option<String>,
    /// The image architecture: amd64, arm64. Default: the host's.
    #[arg(long)]
    pub arch: Option<String>,
    /// A catalogue variant of the OS image, such as Debian's `generic` (full kernel).
    #[arg(long)]
    pub variant: Option<String>,
    /// The OS catalogue file. Default: bases/catalogue.yaml, looked up in ./bases, beside kib's
    /// executable and in /usr/share/kib/bases.
    #[arg(long, value_name = "PATH")]
    pub catalogue: Option<PathBuf>,
    /// Output formats; default: the provider profile's.
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',')]
    pub format: Vec<Format>,
    /// Override a manifest variable. Repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Where the images, bom.json and SHA256SUMS go.
    #[arg(short, long, value_name = "DIR", default_value = "out")]
    pub output_dir: PathBuf,
    /// Base name of the output files; default: the manifest's metadata.name.
    #[arg(long)]
    pub name: Option<String>,
    /// Grow the disk to this size, as customize's --disk-size.
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// Where the per-run work directory is created.
    #[arg(long, value_name = "DIR", default_value_os_t = crate::config::default_work_dir())]
    pub work_dir: PathBuf,
    /// How kib reaches the image's filesystems: loop, guestfs or auto, as for `kib customize`.
    #[arg(long, value_enum, default_value_t = crate::backend::BackendArg::Auto)]
    pub backend: crate::backend::BackendArg,
    /// guestfs backend: how long one appliance session (reading the tree out, writing the
    /// changes back) may take, in seconds, appliance start included. Then it is stopped, with an
    /// error that says so, and nothing of it is left running.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub appliance_timeout: u64,
    #[command(flatten)]
    pub fetch: FetchOptions,
    #[command(flatten)]
    pub cache: BuildCacheOptions,
}

#[derive(Debug, Args)]
pub struct CustomizeArgs {
    /// The input disk image: raw, qcow2, or anything qemu-img reads. It is never modified. A
    /// local path, or an http://, https:// or file:// URL: then it is downloaded through the
    /// mirror map and the cache, and verified before use against --disk-image-sha256, or else
    /// the first of SHA256SUMS, sha256sum.txt, SHA512SUMS and CHECKSUM in the URL's directory
    /// that names it (GNU or BSD format). A second build from the same URL downloads nothing.
    #[arg(long, value_name = "PATH|URL")]
    pub disk_image: PathBuf,
    /// The SHA-256 (64 hex digits) a --disk-image URL must have; no checksum list is fetched.
    #[arg(long, value_name = "HEX")]
    pub disk_image_sha256: Option<String>,
    /// The manifest (YAML, apiVersion kib/v1, kind ImageManifest).
    #[arg(long, value_name = "PATH", required_unless_present = "release_channel", conflicts_with = "release_channel")]
    pub manifest: Option<PathBuf>,
    /// Build the shipped manifest of a Kubernetes release channel: `1-30` is
    /// manifests/k8s-1.30.yaml (looked up in ./manifests, beside kib's executable and in
    /// /usr/share/kib/manifests).
    #[arg(long, value_name = "CHANNEL")]
    pub release_channel: Option<String>,
    /// Apply a provider profile, phases/providers/NAME.yaml (or a profile that lists NAME among
    /// its aliases, such as vsphere for ova), after the manifest's includes. Overrides the
    /// manifest's `provider:`. Its formats become the default output formats.
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Where the images, bom.json and SHA256SUMS go. Created if missing.
    #[arg(short, long, value_name = "DIR", default_value = "out")]
    pub output_dir: PathBuf,
    /// Output formats, comma-separated. Overrides the manifest's output.formats; the default is
    /// qcow2.
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',')]
    pub format: Vec<Format>,
    /// Override a manifest variable: --set kubernetes_version=1.30.6. Repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Do not check the image against the SHA256SUMS or sha256sum.txt beside it (for a URL:
    /// against any checksum list).
    #[arg(long, conflicts_with = "disk_image_sha256")]
    pub no_verify: bool,
    /// Where the per-run work directory (holding the raw working copy) is created.
    #[arg(long, value_name = "DIR", default_value_os_t = crate::config::default_work_dir())]
    pub work_dir: PathBuf,
    #[command(flatten)]
    pub fetch: FetchOptions,
    /// Base name of the output files; defaults to the manifest's metadata.name.
    #[arg(long)]
    pub name: Option<String>,
    /// Grow the disk to this size before Phase 1, such as 20GiB (binary units; rounded up to a
    /// MiB): the working copy, the GPT backup header, the root partition (the last one) and its
    /// filesystem (ext4, xfs, btrfs). Overrides the manifest's disk.size. Never shrinks.
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// Rebuild pinned to an earlier build's bom.json: apt installs the versions it records and
    /// every download must have the SHA-256 it records. A version or artifact that can no longer
    /// be had stops the build with an error naming it.
    #[arg(long, value_name = "BOM")]
    pub lock: Option<PathBuf>,
    /// How many format conversions run at once. Default: the number of CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(usize))]
    pub convert_jobs: Option<usize>,
    /// qcow2 compression; overrides the manifest's output.qcow2_compression (default none).
    #[arg(long, value_enum)]
    pub qcow2_compression: Option<Qcow2Compression>,
    /// The phases to run, comma-separated and consecutive: 0 (verify the input against its
    /// checksum list, grow the disk), 1 (the manifest's steps in the chroot), 2 (sysprep, BOM,
    /// SBOMs, fstrim, conversion). Every run attaches and mounts the image. Without 2 the result
    /// is the working copy as the steps left it, `<name>.raw`, with a bom.json of what was done;
    /// `--phases 2` (or `1,2`) on that raw continues the build, and its BOM carries the earlier
    /// run's steps and input.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "0,1,2", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub phases: Vec<u8>,
    #[command(flatten)]
    pub cache: BuildCacheOptions,
    /// How kib reaches the image's filesystems: loop (loop devices and mounts; needs root),
    /// guestfs (libguestfs's appliance reads the tree out and writes the changes back; no root:
    /// see the README's "Without root"), or auto: loop when kib is root and /dev/loop-control
    /// works, guestfs otherwise. The BOM records the choice and why.
    #[arg(long, value_enum, default_value_t = crate::backend::BackendArg::Auto)]
    pub backend: crate::backend::BackendArg,
    /// guestfs backend: how long one appliance session (reading the tree out, writing the
    /// changes back) may take, in seconds, appliance start included. Then it is stopped, with an
    /// error that says so, and nothing of it is left running.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub appliance_timeout: u64,
    /// Set by `kib build`: the os-release `ID` and `VERSION_ID` pattern the OS catalogue
    /// promises; an image that says otherwise is refused after Phase 0.
    #[arg(skip)]
    pub expect_os: Option<(String, Option<String>)>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The disk image: raw, qcow2, or anything qemu-img reads. It is never modified: the shell
    /// works on a working copy.
    #[arg(long, value_name = "PATH")]
    pub disk_image: PathBuf,
    /// Write the working copy, as the shell or command left it, to FILE (a sparse raw disk)
    /// when it exits with status 0. It is not sysprepped: `kib customize --phases 2
    /// --disk-image FILE` finishes it.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Grow the disk first, as customize's --disk-size does (such as 20GiB).
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// Do not check the image against the SHA256SUMS or sha256sum.txt beside it.
    #[arg(long)]
    pub no_verify: bool,
    /// Where the per-run work directory (holding the raw working copy) is created.
    #[arg(long, value_name = "DIR", default_value_os_t = crate::config::default_work_dir())]
    pub work_dir: PathBuf,
    /// kib's cache folder, for the checksums of inputs already read in full. Default:
    /// /var/cache/kib for root, ~/.cache/kib for a normal user (guestfs backend).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// How kib reaches the image's filesystems: loop, guestfs or auto, as for `kib customize`.
    /// With guestfs the shell works on the tree read out into kib's namespace, and `--save`
    /// writes the changes back through the appliance first.
    #[arg(long, value_enum, default_value_t = crate::backend::BackendArg::Auto)]
    pub backend: crate::backend::BackendArg,
    /// guestfs backend: how long one appliance session may take, in seconds (as for `kib
    /// customize`).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub appliance_timeout: u64,
    /// The command to run in the image, after `--`; default: root's login shell.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The manifest to check.
    #[arg(long, value_name = "PATH")]
    pub manifest: PathBuf,
    /// Apply a provider profile, phases/providers/NAME.yaml (or a profile that lists NAME among
    /// its aliases, such as vsphere for ova), after the manifest's includes. Overrides the
    /// manifest's `provider:`.
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Override a manifest variable, as for customize.
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The image to check (raw is attached directly, read-only; other formats are copied).
    #[arg(long, value_name = "PATH")]
    pub disk_image: PathBuf,
    /// The manifest it was built from.
    #[arg(long, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// The provider profile it was built with (as customize's --provider): its steps are
    /// checked too.
    #[arg(long, value_name = "NAME", requires = "manifest")]
    pub provider: Option<String>,
    /// Variable overrides it was built with.
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Its bom.json, to check the pre-loaded images by name. Default: bom.json beside the image.
    #[arg(long, value_name = "PATH")]
    pub bom: Option<PathBuf>,
    /// Where the work directory is created (for non-raw images, and --boot's overlay and seed).
    #[arg(long, value_name = "DIR", default_value_os_t = crate::config::default_work_dir())]
    pub work_dir: PathBuf,
    /// How kib reaches the image's filesystems: loop, guestfs or auto, as for `kib customize`
    /// (guestfs reads the tree out through libguestfs's appliance, without root).
    #[arg(long, value_enum, default_value_t = crate::backend::BackendArg::Auto)]
    pub backend: crate::backend::BackendArg,
    /// guestfs backend: how long one appliance session (reading the tree out, writing the
    /// changes back) may take, in seconds, appliance start included. Then it is stopped, with an
    /// error that says so, and nothing of it is left running.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub appliance_timeout: u64,
    /// Also boot the image under QEMU, from a throwaway overlay with a NoCloud seed, and check
    /// the running node: containerd active, kubelet enabled but not running, the manifest's
    /// modules loaded and sysctls live, swap off, no failed units, the images ctr lists, a fresh
    /// machine-id. The image itself is not written.
    #[arg(long)]
    pub boot: bool,
    /// --boot: give up (kill QEMU, fail the boot checks) after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 900, requires = "boot")]
    pub boot_timeout: u64,
    /// --boot: the accelerator; `auto` uses KVM when the guest's kernel starts under it within
    /// 45 s, else TCG.
    #[arg(long, value_enum, default_value_t, requires = "boot")]
    pub accel: crate::boot::Accel,
    /// --boot: guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1536, requires = "boot")]
    pub memory: u32,
    /// --boot: keep the serial console log in FILE.
    #[arg(long, value_name = "FILE", requires = "boot")]
    pub console_log: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The work directory base that runs used (their --work-dir).
    #[arg(long, value_name = "DIR", default_value_os_t = crate::config::default_work_dir())]
    pub work_dir: PathBuf,
    /// kib's cache folder, whose half-written build-cache snapshots (of killed runs) are
    /// removed. Default: the configuration's cache_dir, else /var/cache/kib.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image (raw is attached directly, read-only; other formats are copied first).
    pub image: PathBuf,
    /// Print an SBOM of the image instead of the report: `spdx` (SPDX 2.3 JSON) or `cyclonedx`
    /// (CycloneDX 1.5 JSON). It lists the OS and every installed package with its purl and,
    /// where its copyright file declares one, its licence; downloads and pre-loaded images are
    /// listed only in the SBOMs `kib customize` writes.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub sbom: Option<crate::phase2::sbom::SbomFormat>,
    /// Write the SBOM to FILE (atomically) instead of standard output.
    #[arg(long, value_name = "FILE", requires = "sbom")]
    pub sbom_output: Option<PathBuf>,
    /// Where the work directory is created (only used for non-raw images).
    #[arg(long, value_name = "DIR", default_value_os_t = crate::config::default_work_dir())]
    pub work_dir: PathBuf,
    /// How kib reaches the image's filesystems: loop, guestfs or auto, as for `kib customize`
    /// (guestfs reads the tree out through libguestfs's appliance, without root).
    #[arg(long, value_enum, default_value_t = crate::backend::BackendArg::Auto)]
    pub backend: crate::backend::BackendArg,
    /// guestfs backend: how long one appliance session (reading the tree out, writing the
    /// changes back) may take, in seconds, appliance start included. Then it is stopped, with an
    /// error that says so, and nothing of it is left running.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub appliance_timeout: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn typed_flags_parse_and_refuse() {
        let c = Cli::try_parse_from(["kib", "customize", "--disk-image", "x", "--manifest", "m", "--format", "qcow2,raw.zst", "--qcow2-compression", "zstd"]).unwrap();
        let Command::Customize(a) = c.command else { panic!("not customize") };
        assert_eq!(a.format, [Format::Qcow2, Format::RawZst]);
        assert_eq!(a.qcow2_compression, Some(Qcow2Compression::Zstd));
        let e = Cli::try_parse_from(["kib", "customize", "--disk-image", "x", "--manifest", "m", "--format", "qcow3"]).unwrap_err().to_string();
        assert!(e.contains("invalid value 'qcow3' for '--format <LIST>'") && e.contains("raw.zst"), "{e}");
        let e = Cli::try_parse_from(["kib", "inspect", "x", "--output", "yaml"]).unwrap_err().to_string();
        assert!(e.contains("invalid value 'yaml' for '--output <OUTPUT>'"), "{e}");
        let c = Cli::try_parse_from(["kib", "matrix", "run", "m.yaml", "-j", "2", "--index", "3"]).unwrap();
        assert!(matches!(c.command, Command::Matrix(MatrixCommand::Run(MatrixRunArgs { jobs: 2, index: Some(3), .. }))));
        let e = Cli::try_parse_from(["kib", "matrix", "run", "m.yaml", "-j", "0"]).unwrap_err().to_string();
        assert!(e.contains("invalid value '0' for '--jobs <N>'"), "{e}");
        let e = Cli::try_parse_from(["kib", "matrix", "render", "m.yaml", "--target", "nomad"]).unwrap_err().to_string();
        assert!(e.contains("invalid value 'nomad' for '--target <TARGET>'"), "{e}");
        let c = Cli::try_parse_from(["kib", "check", "--disk-image", "x", "--output", "json"]).unwrap();
        assert!(matches!(c.command, Command::Check(_)) && c.output == OutputFormat::Json);
        let c = Cli::try_parse_from(["kib", "--output", "json", "validate", "--manifest", "m"]).unwrap();
        assert_eq!(c.output, OutputFormat::Json);
        let e = Cli::try_parse_from(["kib", "customize", "--disk-image", "x", "--manifest", "m", "--output", "yaml"]).unwrap_err().to_string();
        assert!(e.contains("invalid value 'yaml'") && e.contains("[possible values: text, json]"), "{e}");
        let c = Cli::try_parse_from(["kib", "completions", "zsh"]).unwrap();
        assert!(matches!(c.command, Command::Completions(CompletionsArgs { shell: clap_complete::Shell::Zsh })));
    }
}
