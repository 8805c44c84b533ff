//! The `images` step: pre-loading container images into containerd's store inside the image,
//! with no VM. The archives are fetched on the host (mirror map, cache, SHA-256), copied into a
//! temporary folder in the image, and imported by a script that runs in the chroot, in the
//! step's own PID namespace: it starts the image's containerd on a private socket, waits for it,
//! runs `ctr images import` for each archive, lists the result and stops containerd. When the
//! script ends, `unshare --kill-child` ends anything left in that namespace.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::session::Session;
use super::StepRecord;
use crate::fetch::Fetcher;
use crate::guest::GuestRoot;
use crate::manifest::ImagesStep;

/// An image now in containerd's store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LoadedImage {
    /// Its reference, such as `registry.k8s.io/pause:3.9`.
    pub name: String,
    /// The manifest (or index) digest, `sha256:...`.
    pub digest: String,
    pub namespace: String,
}

const STAGING: &str = "/var/lib/kib-image-import";

/// The script run in the chroot. `$1` is the namespace; each further argument is an archive
/// path, optionally followed by `|` and the name to give the image it holds.
const IMPORT_SCRIPT: &str = r#"set -eu
ns="$1"; shift
state=/run/kib-containerd
uuid=/var/lib/containerd/io.containerd.grpc.v1.introspection/uuid
had_uuid=; if [ -e "$uuid" ]; then had_uuid=1; fi
mkdir -p "$state"
containerd --address "$state/containerd.sock" --state "$state/state" >"$state/log" 2>&1 &
pid=$!
i=0
until ctr --address "$state/containerd.sock" version >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then
    echo "containerd did not start; its log:" >&2
    cat "$state/log" >&2
    exit 1
  fi
  sleep 0.1
done
c() { ctr --address "$state/containerd.sock" -n "$ns" "$@"; }
for arg in "$@"; do
  archive=${arg%%|*}
  tag=
  case "$arg" in *"|"*) tag=${arg#*|} ;; esac
  echo "importing $archive"
  c images ls -q | sort > "$state/before"
  c images import --all-platforms "$archive"
  if [ -n "$tag" ]; then
    c images ls -q | sort | comm -13 "$state/before" - | grep -v '^sha256:' > "$state/new" || true
    if [ "$(wc -l < "$state/new")" -ne 1 ]; then
      echo "cannot tag $archive as $tag: it holds $(wc -l < "$state/new") new images" >&2
      exit 1
    fi
    name=$(cat "$state/new")
    if [ "$name" != "$tag" ]; then
      c images tag --force "$name" "$tag"
      c images rm "$name" >/dev/null
    fi
  fi
done
# containerd collects the import's unreferenced blobs (the archive's own metadata) in the
# background, whenever it gets to it; removing a throw-away tag with --sync runs that collection
# now, so that the store holds the same files on every build.
some=$(c images ls -q | grep -v '^sha256:' | head -n 1)
if [ -n "$some" ]; then
  c images tag "$some" kib.invalid/gc:sync >/dev/null
  c images rm --sync kib.invalid/gc:sync >/dev/null
fi
ctr --address "$state/containerd.sock" -n "$ns" images ls > /var/lib/kib-image-import/images.txt
kill "$pid"
wait "$pid" || true
# The instance UUID containerd made on this first start would be shared by every node built from
# the image; each node's containerd makes its own.
if [ -z "$had_uuid" ]; then rm -f "$uuid"; fi
"#;

/// Runs one `images` step.
pub fn apply(session: &mut Session, root: &GuestRoot, fetcher: &Fetcher, step: &ImagesStep, arch: &str, timeout: Option<Duration>, record: &mut StepRecord) -> Result<()> {
    for tool in ["containerd", "ctr"] {
        if !["/usr/bin", "/usr/local/bin", "/usr/sbin"].iter().any(|d| session.has(&format!("{d}/{tool}"))) {
            bail!("`images` needs {tool} in the image; install containerd in an earlier step");
        }
    }
    let namespace = step.namespace.clone().unwrap_or_else(|| "k8s.io".into());
    let mut inside = Vec::new();
    let result = (|| -> Result<Vec<String>> {
        for (i, a) in step.archives.iter().enumerate() {
            let sum = super::download::expected_sum(fetcher, &a.url, a.sha256.as_ref(), a.sha256_url.as_deref(), arch)?;
            let fetched = fetcher.fetch(&a.url, &sum)?;
            let dest = format!("{STAGING}/{i}.tar");
            let arg = match &a.tag {
                Some(t) => format!("{dest}|{t}"),
                None => dest.clone(),
            };
            // Stream the archive into the image: it may be hundreds of MiB.
            let size = std::fs::metadata(&fetched.path).with_context(|| format!("reading {}", fetched.path.display()))?.len();
            let file = std::fs::File::open(&fetched.path).with_context(|| format!("reading {}", fetched.path.display()))?;
            let task = crate::progress::Activity::task(format!("copying {} into the image", fetched.url.rsplit('/').next().unwrap_or(&fetched.url)), Some(size));
            root.write_from(Path::new(&dest), &mut task.reader(file), 0o600, 0, 0).with_context(|| format!("copying {} into the image", fetched.url))?;
            task.finish();
            inside.push(arg);
            record.downloads.push(fetched);
        }
        let mut argv: Vec<&str> = vec!["/bin/sh", "-c", IMPORT_SCRIPT, "kib-images", &namespace];
        argv.extend(inside.iter().map(String::as_str));
        session.run(&argv, &[], "containerd image import", timeout)?;
        Ok(root.read_string(Path::new(&format!("{STAGING}/images.txt")))?.unwrap_or_default().lines().map(str::to_string).collect())
    })();
    root.remove(Path::new(STAGING)).context("removing the imported archives from the image")?;
    let listing = result?;
    record.images = parse_images_ls(&listing, &namespace);
    if record.images.is_empty() {
        bail!("ctr listed no images after the import:\n  | {}", listing.join("\n  | "));
    }
    for img in &record.images {
        tracing::info!("image {} ({}) loaded into namespace {}", img.name, img.digest, img.namespace);
    }
    Ok(())
}

/// Parses a `ctr images ls` table.
pub fn parse_images_ls(lines: &[String], namespace: &str) -> Vec<LoadedImage> {
    lines
        .iter()
        .filter(|l| !l.starts_with("REF "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_string();
            let _media_type = w.next()?;
            let digest = w.next()?.to_string();
            // The CRI plugin also lists each image under its config digest: an alias, skipped.
            (digest.starts_with("sha256:") && !name.starts_with("sha256:")).then(|| LoadedImage { name, digest, namespace: namespace.to_string() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ctr_images_ls() {
        let out: Vec<String> = [
            "REF                       TYPE                                                 DIGEST                                                                  SIZE    PLATFORMS   LABELS",
            "registry.k8s.io/pause:3.9 application/vnd.docker.distribution.manifest.v2+json sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097 311.6 KiB linux/amd64 -",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let imgs = parse_images_ls(&out, "k8s.io");
        assert_eq!(imgs.len(), 1);
        assert_eq!(imgs[0].name, "registry.k8s.io/pause:3.9");
        assert_eq!(imgs[0].digest, "sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097");
    }
}
