//! Owner names resolved against the image's own /etc/passwd and /etc/group (never the host's).

use std::path::Path;

use anyhow::{bail, Result};

use crate::guest::GuestRoot;

/// Resolves `user:group` (or `user`, group then being the user's primary group) to numeric ids.
/// Numbers are taken as they are, and `root` is always 0, even in an image without /etc/passwd.
///
/// Errors: a name the image does not define.
pub fn resolve_owner(root: &GuestRoot, owner: &str) -> Result<(u32, u32)> {
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let passwd = root.read_string(Path::new("/etc/passwd"))?.unwrap_or_default();
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) if user == "root" => (0, 0),
        Err(_) => match lookup(&passwd, user) {
            Some(f) => (f[2].parse()?, f[3].parse()?),
            None => bail!("owner `{owner}`: the image's /etc/passwd has no user `{user}`"),
        },
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) if g == "root" => 0,
            Err(_) => {
                let groups = root.read_string(Path::new("/etc/group"))?.unwrap_or_default();
                match lookup(&groups, g) {
                    Some(f) => f[2].parse()?,
                    None => bail!("owner `{owner}`: the image's /etc/group has no group `{g}`"),
                }
            }
        },
    };
    Ok((uid, gid))
}

fn lookup<'a>(db: &'a str, name: &str) -> Option<Vec<&'a str>> {
    db.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 4 && f[0] == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_from_the_image() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n_chrony:x:104:110::/var/lib/chrony:/usr/sbin/nologin\n").unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nadm:x:4:\n_chrony:x:110:\n").unwrap();
        let g = GuestRoot::open(d.path()).unwrap();
        assert_eq!(resolve_owner(&g, "root:root").unwrap(), (0, 0));
        assert_eq!(resolve_owner(&g, "_chrony").unwrap(), (104, 110));
        assert_eq!(resolve_owner(&g, "_chrony:adm").unwrap(), (104, 4));
        assert_eq!(resolve_owner(&g, "1000:1000").unwrap(), (1000, 1000));
        assert!(resolve_owner(&g, "nobody:root").unwrap_err().to_string().contains("no user `nobody`"));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve_owner(&GuestRoot::open(empty.path()).unwrap(), "root:root").unwrap(), (0, 0));
    }
}
