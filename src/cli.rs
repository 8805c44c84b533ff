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
    /// Download every artifact a manifest needs (`download` files, repository keys, image
    /// archives, checksum files) into the cache, so that an air-gapped host (given the cache
    /// folder, say on a USB disk) can build with --offline.
    Fetch(FetchArgs),
    /// Print a shell completion script for bash, zsh or fish: `kib completions bash >
    /// /etc/bash_completion.d/kib`.
    Completions(CompletionsArgs),
    /// Print kib's man page (roff): `kib man > /usr/share/man/man1/kib.1`.
    Man(ManArgs),
    /// Print the JSON Schema of kib manifests and phase files, derived from the types kib reads
    /// them with. Editors use it for completion and checking (see the README's modeline).
    Schema(SchemaArgs),
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
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The manifest whose downloads to fetch.
    #[arg(long, value_name = "PATH")]
    pub manifest: PathBuf,
    /// Override a manifest variable, as for customize.
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// The image architecture to fetch for (`${arch}`): amd64, arm64, ... Default: the host's.
    #[arg(long)]
    pub arch: Option<String>,
    #[command(flatten)]
    pub fetch: FetchOptions,
}

#[derive(Debug, Args)]
pub struct CustomizeArgs {
    /// The input disk image: raw, qcow2, or anything qemu-img reads. It is never modified.
    #[arg(long, value_name = "PATH")]
    pub disk_image: PathBuf,
    /// The manifest (YAML, apiVersion kib/v1, kind ImageManifest).
    #[arg(long, value_name = "PATH", required_unless_present = "release_channel", conflicts_with = "release_channel")]
    pub manifest: Option<PathBuf>,
    /// Build the shipped manifest of a Kubernetes release channel: `1-30` is
    /// manifests/k8s-1.30.yaml (looked up in ./manifests, beside kib's executable and in
    /// /usr/share/kib/manifests).
    #[arg(long, value_name = "CHANNEL")]
    pub release_channel: Option<String>,
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
    /// Do not check the image against the SHA256SUMS or sha256sum.txt beside it.
    #[arg(long)]
    pub no_verify: bool,
    /// Where the per-run work directory (holding the raw working copy) is created.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/kib")]
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
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/kib")]
    pub work_dir: PathBuf,
    /// kib's cache folder, for the checksums of inputs already read in full.
    #[arg(long, value_name = "DIR", default_value = "/var/cache/kib")]
    pub cache_dir: PathBuf,
    /// The command to run in the image, after `--`; default: root's login shell.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The manifest to check.
    #[arg(long, value_name = "PATH")]
    pub manifest: PathBuf,
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
    /// Variable overrides it was built with.
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Its bom.json, to check the pre-loaded images by name. Default: bom.json beside the image.
    #[arg(long, value_name = "PATH")]
    pub bom: Option<PathBuf>,
    /// Where the work directory is created (only used for non-raw images).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/kib")]
    pub work_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The work directory base that runs used (their --work-dir).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/kib")]
    pub work_dir: PathBuf,
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
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/kib")]
    pub work_dir: PathBuf,
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
