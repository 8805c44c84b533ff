//! Parsing the image's /etc/fstab.

/// How an fstab entry names its filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    Uuid(String),
    Label(String),
    PartUuid(String),
    PartLabel(String),
    /// A device path such as `/dev/sda1`, or a pseudo-filesystem name such as `tmpfs`.
    Other(String),
}

/// One fstab line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub spec: Spec,
    pub mount_point: String,
    pub fstype: String,
    pub options: Vec<String>,
}

impl Entry {
    /// Whether the entry is a bind mount (`bind` or `rbind` among its options).
    pub fn is_bind(&self) -> bool {
        self.options.iter().any(|o| o == "bind" || o == "rbind")
    }

    /// Whether the entry carries `noauto`.
    pub fn noauto(&self) -> bool {
        self.options.iter().any(|o| o == "noauto")
    }
}

/// Parses fstab(5) text: comments and blank lines are skipped, `\040`-style escapes decoded,
/// `UUID=`, `LABEL=`, `PARTUUID=`, `PARTLABEL=` and their `/dev/disk/by-*/` forms recognized.
/// Malformed lines (fewer than three fields) are skipped. UUIDs are compared lowercase.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut f = line.split_whitespace();
            let spec = unescape(f.next()?);
            let mount_point = unescape(f.next()?);
            let fstype = f.next()?.to_string();
            let options = f.next().unwrap_or("defaults").split(',').map(str::to_string).collect();
            Some(Entry { spec: parse_spec(&spec), mount_point, fstype, options })
        })
        .collect()
}

fn parse_spec(s: &str) -> Spec {
    let strip_quotes = |v: &str| v.trim_matches('"').to_string();
    for (prefix, by) in [("UUID=", "/dev/disk/by-uuid/"), ("PARTUUID=", "/dev/disk/by-partuuid/")] {
        if let Some(v) = s.strip_prefix(prefix).or_else(|| s.strip_prefix(by)) {
            let v = strip_quotes(v).to_ascii_lowercase();
            return if prefix == "UUID=" { Spec::Uuid(v) } else { Spec::PartUuid(v) };
        }
    }
    if let Some(v) = s.strip_prefix("LABEL=").or_else(|| s.strip_prefix("/dev/disk/by-label/")) {
        return Spec::Label(strip_quotes(v));
    }
    if let Some(v) = s.strip_prefix("PARTLABEL=").or_else(|| s.strip_prefix("/dev/disk/by-partlabel/")) {
        return Spec::PartLabel(strip_quotes(v));
    }
    Spec::Other(s.to_string())
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3 && digits.chars().all(|d| ('0'..='7').contains(&d)) {
                if let Ok(v) = u8::from_str_radix(&digits, 8) {
                    out.push(v as char);
                    for _ in 0..3 {
                        chars.next();
                    }
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_debian_cloud_fstab() {
        let text = "# /etc/fstab: static file system information.\n\
            UUID=8C3A5D2E-1b2c-4d5e-8f90-0123456789ab / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1\n\
            \n\
            UUID=A1B2-C3D4 /boot/efi vfat defaults 0 0\n\
            LABEL=\"data\\040disk\" /srv/my\\040data xfs noauto 0 2\n\
            PARTUUID=abcd-02 /boot ext4 defaults 0 2\n\
            /dev/disk/by-uuid/1234 none swap sw 0 0\n\
            tmpfs /tmp tmpfs defaults\n\
            broken-line\n";
        let e = parse(text);
        assert_eq!(e.len(), 6);
        assert_eq!(e[0].spec, Spec::Uuid("8c3a5d2e-1b2c-4d5e-8f90-0123456789ab".into()));
        assert_eq!(e[0].mount_point, "/");
        assert_eq!(e[0].options[0], "rw");
        assert_eq!(e[1].spec, Spec::Uuid("a1b2-c3d4".into()));
        assert_eq!(e[1].fstype, "vfat");
        assert_eq!(e[2].spec, Spec::Label("data disk".into()));
        assert_eq!(e[2].mount_point, "/srv/my data");
        assert!(e[2].noauto());
        assert_eq!(e[3].spec, Spec::PartUuid("abcd-02".into()));
        assert_eq!(e[4].spec, Spec::Uuid("1234".into()));
        assert_eq!(e[4].fstype, "swap");
        assert_eq!(e[5].spec, Spec::Other("tmpfs".into()));
    }
}
