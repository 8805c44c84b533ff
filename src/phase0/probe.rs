//! Identifying the filesystem in a byte range of the disk: `blkid -p` (util-linux), run through
//! [`crate::sys::Sys::probe`], reads superblocks without attaching anything; this module parses
//! its output and says which filesystems kib mounts.

pub use crate::sys::{parse_export, Probe};

/// Filesystems kib can mount as an image's root or /boot.
pub const LINUX_FS: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_export_format() {
        let p = parse_export("DEVNAME=disk.raw\nUUID=1234-abcd\nBLOCK_SIZE=4096\nTYPE=ext4\n");
        assert_eq!(p["TYPE"], "ext4");
        assert_eq!(p["UUID"], "1234-abcd");
    }

    #[test]
    fn probes_a_filesystem_at_an_offset() {
        use crate::sys::Sys;
        let probe = |d: &std::path::Path, o, s| crate::sys::real::RealSys.probe(d, o, s);
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.raw");
        let fs = d.path().join("fs.raw");
        std::fs::File::create(&fs).unwrap().set_len(8 << 20).unwrap();
        let ok = crate::exec::host_tool("mkfs.ext4")
            .args(["-q", "-F", "-L", "kibtest", "-U", "0b9c1e1e-5f57-4b1d-9f5a-2a7c3f0e9d11"])
            .arg(&fs)
            .status()
            .expect("mkfs.ext4 (e2fsprogs) is needed by this test");
        assert!(ok.success());
        let mut bytes = vec![0u8; 1 << 20];
        bytes.extend(std::fs::read(&fs).unwrap());
        std::fs::write(&disk, &bytes).unwrap();
        let p = probe(&disk, 1 << 20, 8 << 20).unwrap();
        assert_eq!(p["TYPE"], "ext4");
        assert_eq!(p["LABEL"], "kibtest");
        assert_eq!(p["UUID"], "0b9c1e1e-5f57-4b1d-9f5a-2a7c3f0e9d11");
        assert!(!probe(&disk, 0, 1 << 20).unwrap().contains_key("TYPE"));
    }
}
