//! Output formats, as one type for the `--format` flag (clap) and the manifest's
//! `output.formats` (serde), and qcow2 compression likewise. Phase 2's conversion
//! ([`crate::phase2::convert`]) says how each is written.

use std::fmt;

/// A disk format kib can write. `--format` and `output.formats` spell it as [`Format::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, schemars::JsonSchema, serde::Deserialize, serde::Serialize)]
pub enum Format {
    /// Plain raw disk (sparse).
    #[value(name = "raw")]
    #[serde(rename = "raw")]
    Raw,
    /// qcow2 (OpenStack, Proxmox, Nutanix, KubeVirt), compression per [`Qcow2Compression`].
    #[value(name = "qcow2")]
    #[serde(rename = "qcow2")]
    Qcow2,
    /// streamOptimized VMDK (vSphere, AWS import).
    #[value(name = "vmdk")]
    #[serde(rename = "vmdk")]
    Vmdk,
    /// OVA (vSphere): OVF descriptor, `.mf` manifest and streamOptimized VMDK in a ustar archive.
    #[value(name = "ova")]
    #[serde(rename = "ova")]
    Ova,
    /// Fixed VHD (Azure): the virtual size must be a multiple of 1 MiB.
    #[value(name = "vhd")]
    #[serde(rename = "vhd")]
    Vhd,
    /// VHDX (Hyper-V).
    #[value(name = "vhdx")]
    #[serde(rename = "vhdx")]
    Vhdx,
    /// zstd-compressed raw (bare metal, Tinkerbell).
    #[value(name = "raw.zst")]
    #[serde(rename = "raw.zst")]
    RawZst,
    /// gzip-compressed raw.
    #[value(name = "raw.gz")]
    #[serde(rename = "raw.gz")]
    RawGz,
    /// GCE: `disk.raw` inside a gzip-compressed GNU tar (`<name>.tar.gz`).
    #[value(name = "gce")]
    #[serde(rename = "gce")]
    Gce,
}

impl Format {
    /// Every format, in `--help` order.
    pub const ALL: &'static [Format] =
        &[Format::Raw, Format::Qcow2, Format::Vmdk, Format::Ova, Format::Vhd, Format::Vhdx, Format::RawZst, Format::RawGz, Format::Gce];

    /// The name `--format` and `output.formats` use, which is also the file extension (but gce's).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Ova => "ova",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::RawZst => "raw.zst",
            Format::RawGz => "raw.gz",
            Format::Gce => "gce",
        }
    }

    /// The output file's name for an image called `name`.
    pub fn file_name(self, name: &str) -> String {
        match self {
            Format::Gce => format!("{name}.tar.gz"),
            f => format!("{name}.{}", f.name()),
        }
    }

    /// `list` without repeats, first occurrence kept.
    pub fn dedup(list: &[Format]) -> Vec<Format> {
        let mut out: Vec<Format> = Vec::new();
        for f in list {
            if !out.contains(f) {
                out.push(*f);
            }
        }
        out
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// qcow2 cluster compression: `--qcow2-compression` and `output.qcow2_compression`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, schemars::JsonSchema, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qcow2Compression {
    /// No compression (the default): fastest.
    #[default]
    None,
    /// zlib: what every qemu reads; slow to write.
    Zlib,
    /// zstd (`compression_type=zstd`): fast, needs qemu 5.1+ to read.
    Zstd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_and_manifest_spell_formats_alike() {
        use clap::ValueEnum;
        for f in Format::ALL {
            assert_eq!(f.to_possible_value().unwrap().get_name(), f.name());
            let from_yaml: Format = yaml_serde::from_str(f.name()).unwrap();
            assert_eq!(from_yaml, *f);
        }
        assert_eq!(Format::ALL.len(), 9);
        let e = yaml_serde::from_str::<Format>("qcow3").unwrap_err().to_string();
        assert!(e.contains("unknown variant `qcow3`") && e.contains("raw.zst"), "{e}");
        assert_eq!(Format::Gce.file_name("n"), "n.tar.gz");
        assert_eq!(Format::RawZst.file_name("n"), "n.raw.zst");
        assert_eq!(Format::dedup(&[Format::Qcow2, Format::Raw, Format::Qcow2]), [Format::Qcow2, Format::Raw]);
        let c: Qcow2Compression = yaml_serde::from_str("zstd").unwrap();
        assert_eq!(c, Qcow2Compression::Zstd);
        assert!(yaml_serde::from_str::<Qcow2Compression>("lz4").is_err_and(|e| e.to_string().contains("unknown variant `lz4`")));
    }
}
