//! Converting the working copy into the requested disk formats: `qemu-img convert` for disk
//! formats, zstd/gzip for compressed raw, GNU tar for GCE. Outputs are written into a hidden
//! staging folder in the output folder and moved into place together only when all are
//! complete, so a failed or interrupted build leaves no partial image there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bom::Artifact;
use crate::exec;
use crate::progress::Activity;
pub use crate::format::{Format, Qcow2Compression};

use super::stream;

/// The staging folder: artifacts are written there and moved into the output folder together by
/// [`Staging::commit`] once all of them are complete; if the build fails first, dropping it
/// removes them. It lies in the run's work directory when that is on the output folder's
/// filesystem (so even a SIGKILL leaves nothing in the output folder), else it is a hidden
/// `.kib-staging-<pid>` folder in the output folder.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates `<work_dir>/staging`, or `<out_dir>/.kib-staging-<pid>` when a file cannot be
    /// renamed from the work directory into the output folder. Having the same filesystem is not
    /// enough: two bind mounts of one filesystem (a pod's volumes, say) share `st_dev` but
    /// rename(2) between them fails with EXDEV, so this probes with a real rename.
    pub fn create(out_dir: &Path, work_dir: Option<&Path>) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let out_dev = std::fs::metadata(out_dir).with_context(|| format!("output folder {}", out_dir.display()))?.dev();
        let dir = match work_dir.filter(|w| std::fs::metadata(w).is_ok_and(|m| m.dev() == out_dev) && renames_into(w, out_dir)) {
            Some(w) => w.join("staging"),
            None => out_dir.join(format!(".kib-staging-{}", std::process::id())),
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Staging { dir, committed: false })
    }

    /// The staging folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves `files` (names in the staging folder), in this order, into `out_dir`, replacing
    /// files of the same names, then removes the staging folder.
    pub fn commit(mut self, out_dir: &Path, files: &[&str]) -> Result<()> {
        for f in files {
            std::fs::rename(self.dir.join(f), out_dir.join(f)).with_context(|| format!("moving {f} into {}", out_dir.display()))?;
        }
        self.committed = true;
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The qemu-img command that writes `format` to `dest` from the raw `disk` (the formats qemu-img
/// writes: raw, qcow2, vmdk, vhdx, vhd).
fn qemu_command(format: Format, compression: Qcow2Compression, disk: &Path, dest: &Path) -> Command {
    let qemu = |args: &[&str]| {
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-f", "raw"]).args(args).arg(disk).arg(dest);
        c
    };
    match format {
        Format::Qcow2 => match compression {
            Qcow2Compression::None => qemu(&["-O", "qcow2"]),
            Qcow2Compression::Zlib => qemu(&["-O", "qcow2", "-c"]),
            Qcow2Compression::Zstd => qemu(&["-O", "qcow2", "-c", "-o", "compression_type=zstd"]),
        },
        Format::Vmdk | Format::Ova => qemu(&["-O", "vmdk", "-o", "subformat=streamOptimized"]),
        Format::Vhdx => qemu(&["-O", "vhdx", "-o", "subformat=dynamic"]),
        Format::Vhd => qemu(&["-O", "vpc", "-o", "subformat=fixed,force_size=on"]),
        Format::Raw | Format::RawZst | Format::RawGz | Format::Gce => qemu(&["-O", "raw"]),
    }
}

/// The compressor that turns the raw disk on its standard input into `format` (raw.zst,
/// raw.gz) on its standard output.
fn compressor(format: Format) -> Command {
    match format {
        Format::RawZst => {
            let mut c = Command::new("zstd");
            c.args(["-q", "-T0", "-c"]);
            c
        }
        _ => {
            let mut c = Command::new(stream::gzip_program());
            c.arg("-c");
            c
        }
    }
}

/// The pipeline that writes the gce tarball of `disk` (named disk.raw, as GCE wants) to its
/// standard output: GNU tar with the disk's holes recorded as holes, into gzip.
fn gce_pipeline(disk: &Path) -> Vec<Command> {
    let mut tar = Command::new("tar");
    tar.args(["--format=gnu", "--sparse", "-cf", "-", "-C"]).arg(disk.parent().unwrap_or(Path::new("."))).arg(disk.file_name().unwrap_or_default());
    let mut gzip = Command::new(stream::gzip_program());
    gzip.arg("-c");
    vec![tar, gzip]
}

/// Whether a file renames from `from` into `to`: creates an empty probe file in `from`, renames it
/// into `to` and removes it. Any failure (EXDEV across mounts, permissions) means no.
fn renames_into(from: &Path, to: &Path) -> bool {
    let name = format!(".kib-rename-probe-{}", std::process::id());
    let (src, dst) = (from.join(&name), to.join(&name));
    if std::fs::File::create(&src).is_err() {
        return false;
    }
    let ok = std::fs::rename(&src, &dst).is_ok();
    let _ = std::fs::remove_file(if ok { &dst } else { &src });
    ok
}

/// Moves the raw working copy `disk` to `dest`: a rename on the same filesystem, else a sparse
/// copy with qemu-img (`disk` then stays). `dest` is replaced if it exists.
///
/// Errors: the copy fails (its output is shown).
pub fn move_raw(disk: &Path, dest: &Path) -> Result<()> {
    if std::fs::rename(disk, dest).is_err() {
        exec::run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw"]).arg(disk).arg(dest), "qemu-img convert to raw", None)?;
    }
    Ok(())
}

/// How [`convert_all`] works.
#[derive(Debug, Clone)]
pub struct Plan {
    pub compression: Qcow2Compression,
    /// How many conversions run at once (at least 1).
    pub jobs: usize,
    /// The OVF descriptor's data; needed for [`Format::Ova`].
    pub ovf: Option<super::ova::OvfInfo>,
}

/// Whether `f` writes about as many bytes as the disk holds (so that a bar can show a total).
fn uncompressed(f: Format, compression: Qcow2Compression) -> bool {
    match f {
        Format::Qcow2 => compression == Qcow2Compression::None,
        Format::Raw | Format::Vhd | Format::Vhdx => true,
        _ => false,
    }
}

/// One unit of conversion work.
#[derive(Debug, Clone)]
enum Task {
    /// qemu-img writes the file, hashed right after by the same worker (qemu-img seeks in its
    /// output, so it cannot write to a pipe).
    Qemu(Format),
    /// The streamOptimized VMDK, then the OVA around it; `keep_vmdk` when vmdk was asked for too,
    /// so it is converted once.
    VmdkOva { keep_vmdk: bool },
    /// One read of the raw disk feeds the compressors of these formats (raw.zst, raw.gz), each
    /// output hashed as it is written, and with `hash_raw` hashes the raw output-to-be too.
    Compress { formats: Vec<Format>, hash_raw: bool },
    /// gce: tar into gzip, hashed as it is written.
    Gce,
    /// The raw output's SHA-256 alone (no compressor reads the disk).
    HashRaw,
}

/// What a task wrote.
type Written = (Format, stream::Hashed);

/// Writes `<name>.<format>` for each format into `dir` (a [`Staging`] folder) from the raw
/// `disk`, `plan.jobs` at a time, the slowest first (see DESIGN §6: streamOptimized VMDK and zlib
/// qcow2 take tens of seconds, raw and uncompressed qcow2 about one). Every artifact is hashed
/// while it is written (streamed formats) or by the worker that wrote it, right after (qemu-img's
/// formats), and the raw disk is read once for raw, raw.zst and raw.gz together. gzip is pigz
/// when the host has it. The OVA reuses the VMDK. Raw output comes last and is the working copy
/// itself, renamed, when it lies on the same filesystem (so `disk` may be gone afterwards).
/// Returns each artifact with its SHA-256, in the order of `formats`.
///
/// Errors: a vhd of a disk whose size is not a whole MiB, an ova without `plan.ovf`, or a failing
/// conversion (its output is shown); the first error is returned after every running conversion
/// ended.
pub fn convert_all(disk: &Path, dir: &Path, name: &str, formats: &[Format], plan: &Plan) -> Result<Vec<Artifact>> {
    let disk_meta = std::fs::metadata(disk).with_context(|| format!("reading {}", disk.display()))?;
    if formats.contains(&Format::Vhd) {
        let size = disk_meta.len();
        if size % (1 << 20) != 0 {
            bail!("vhd (Azure) needs a virtual size that is a multiple of 1 MiB; this disk has {size} bytes");
        }
    }
    if formats.contains(&Format::Gce) && disk.file_name() != Some(std::ffi::OsStr::new("disk.raw")) {
        bail!("internal: the gce format needs the working copy to be named disk.raw");
    }
    if formats.contains(&Format::Ova) && plan.ovf.is_none() {
        bail!("internal: the ova format needs the OVF descriptor's data");
    }
    let mut tasks: Vec<Task> = Vec::new();
    if formats.contains(&Format::Ova) {
        tasks.push(Task::VmdkOva { keep_vmdk: formats.contains(&Format::Vmdk) });
    }
    let compressed: Vec<Format> = formats.iter().copied().filter(|f| matches!(f, Format::RawZst | Format::RawGz)).collect();
    let slowness = |t: &Task| match t {
        Task::VmdkOva { .. } | Task::Qemu(Format::Vmdk) => 0,
        Task::Qemu(Format::Qcow2) if plan.compression == Qcow2Compression::Zlib => 1,
        Task::Compress { .. } | Task::Gce => 2,
        Task::Qemu(Format::Vhdx | Format::Vhd) => 4,
        Task::HashRaw => 5,
        _ => 3,
    };
    for f in formats {
        match f {
            Format::Raw | Format::Ova | Format::RawZst | Format::RawGz => {}
            Format::Vmdk if formats.contains(&Format::Ova) => {}
            Format::Gce => tasks.push(Task::Gce),
            f => tasks.push(Task::Qemu(*f)),
        }
    }
    let hash_raw = formats.contains(&Format::Raw);
    if !compressed.is_empty() {
        tasks.push(Task::Compress { formats: compressed, hash_raw });
    } else if hash_raw {
        tasks.push(Task::HashRaw);
    }
    tasks.sort_by_key(slowness);

    use std::os::unix::fs::MetadataExt;
    let populated = disk_meta.blocks() * 512;
    let hash_file = |f: Format, p: PathBuf| -> Result<Written> {
        let size = std::fs::metadata(&p).with_context(|| format!("reading {}", p.display()))?.len();
        let task = Activity::task(format!("sha256 of {}", p.file_name().unwrap_or_default().to_string_lossy()), Some(size));
        let file = std::fs::File::open(&p).with_context(|| format!("hashing {}", p.display()))?;
        let sha256 = crate::hash::sha256_reader(&mut task.reader(file)).with_context(|| format!("hashing {}", p.display()))?;
        task.finish();
        Ok((f, stream::Hashed { path: p, sha256, size }))
    };
    let run_task = |task: Task| -> Result<Vec<Written>> {
        let t = std::time::Instant::now();
        match task {
            Task::Qemu(f) => {
                let dest = dir.join(f.file_name(name));
                let task = Activity::task(format!("converting to {}", f.name()), uncompressed(f, plan.compression).then_some(populated));
                task.watch_growth(&dest).during(|| exec::run(&mut qemu_command(f, plan.compression, disk, &dest), &format!("writing the {} image", f.name()), None))?;
                task.finish();
                tracing::debug!("converted to {} in {:.1}s", f.name(), t.elapsed().as_secs_f64());
                Ok(vec![hash_file(f, dest)?])
            }
            Task::Gce => {
                let dest = dir.join(Format::Gce.file_name(name));
                let task = Activity::task("converting to gce (tar.gz)", None);
                let hashed = task.watch_growth(&dest).during(|| stream::pipeline_to_file(&mut gce_pipeline(disk), &dest, "writing the gce tarball"))?;
                task.finish();
                tracing::debug!("converted to gce in {:.1}s with {}", t.elapsed().as_secs_f64(), stream::gzip_program());
                Ok(vec![(Format::Gce, hashed)])
            }
            Task::Compress { formats, hash_raw } => {
                let label = formats.iter().map(|f| f.name()).collect::<Vec<_>>().join(" and ");
                let task = Activity::task(format!("compressing to {label}"), Some(disk_meta.len()));
                let outs: Vec<(Command, PathBuf, String)> = formats.iter().map(|f| (compressor(*f), dir.join(f.file_name(name)), format!("writing the {} image", f.name()))).collect();
                let (hashed, raw_sum) = stream::fan_out(disk, outs, hash_raw, &|n| task.inc(n))?;
                task.finish();
                tracing::debug!("compressed to {label} in {:.1}s", t.elapsed().as_secs_f64());
                let mut out: Vec<Written> = formats.into_iter().zip(hashed).collect();
                if let Some(sha256) = raw_sum {
                    out.push((Format::Raw, stream::Hashed { path: disk.to_path_buf(), sha256, size: disk_meta.len() }));
                }
                Ok(out)
            }
            Task::HashRaw => Ok(vec![hash_file(Format::Raw, disk.to_path_buf())?]),
            Task::VmdkOva { keep_vmdk } => {
                let vmdk = if keep_vmdk { dir.join(Format::Vmdk.file_name(name)) } else { dir.join(format!(".{name}-ova-disk.vmdk")) };
                let task = Activity::task("converting to vmdk (streamOptimized)", None);
                task.watch_growth(&vmdk).during(|| exec::run(&mut qemu_command(Format::Vmdk, plan.compression, disk, &vmdk), "writing the streamOptimized vmdk for the ova", None))?;
                task.finish();
                tracing::debug!("converted to vmdk in {:.1}s", t.elapsed().as_secs_f64());
                let t = std::time::Instant::now();
                let ova = dir.join(Format::Ova.file_name(name));
                let mut info = plan.ovf.clone().unwrap_or_default();
                info.name = name.to_string();
                let size = std::fs::metadata(&vmdk).map_or(0, |m| m.len());
                let task = Activity::task("packing the ova", Some(size));
                let (vmdk_sum, hashed) = task.watch_growth(&ova).during(|| super::ova::write(&ova, &info, &vmdk, disk_meta.len(), populated)).context("writing the ova")?;
                task.finish();
                tracing::debug!("packed the ova in {:.1}s", t.elapsed().as_secs_f64());
                let mut out = vec![(Format::Ova, hashed)];
                if keep_vmdk {
                    let size = std::fs::metadata(&vmdk).with_context(|| format!("reading {}", vmdk.display()))?.len();
                    out.push((Format::Vmdk, stream::Hashed { path: vmdk, sha256: vmdk_sum, size }));
                } else {
                    std::fs::remove_file(&vmdk).with_context(|| format!("removing {}", vmdk.display()))?;
                }
                Ok(out)
            }
        }
    };
    let queue = std::sync::Mutex::new(std::collections::VecDeque::from(tasks));
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..plan.jobs.max(1) {
            s.spawn(|| {
                loop {
                    let Some(task) = queue.lock().expect("queue lock").pop_front() else { break };
                    let r = run_task(task);
                    let failed = r.is_err();
                    results.lock().expect("results lock").push(r);
                    if failed {
                        queue.lock().expect("queue lock").clear(); // start nothing new
                    }
                }
            });
        }
    });
    let mut written: Vec<Written> = Vec::new();
    for r in results.into_inner().expect("results lock") {
        written.extend(r?);
    }
    if let Some((_, raw)) = written.iter_mut().find(|w| w.0 == Format::Raw) {
        let dest = dir.join(format!("{name}.raw"));
        let t = std::time::Instant::now();
        move_raw(disk, &dest)?;
        tracing::info!("raw image ready in {:.1}s", t.elapsed().as_secs_f64());
        raw.path = dest;
    }
    written.sort_by_key(|(f, _)| formats.iter().position(|x| x == f));
    Ok(written
        .into_iter()
        .map(|(f, h)| Artifact { file: h.path.file_name().expect("artifact has a name").to_string_lossy().into_owned(), format: f.name().to_string(), sha256: h.sha256, size: h.size })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_leaves_no_partials() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.raw");
        let mut data = vec![0u8; 4 << 20];
        data[12345] = 1;
        std::fs::write(&disk, &data).unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let staging = Staging::create(&out, None).unwrap();
        let plan = |compression, jobs| Plan { compression, jobs, ovf: None };
        let arts = convert_all(&disk, staging.dir(), "node", &[Format::Qcow2, Format::Vmdk, Format::Raw], &plan(Qcow2Compression::Zstd, 2)).unwrap();
        staging.commit(&out, &["node.qcow2", "node.vmdk", "node.raw"]).unwrap();
        assert_eq!(arts.iter().map(|a| a.file.as_str()).collect::<Vec<_>>(), ["node.qcow2", "node.vmdk", "node.raw"]);
        assert_eq!(std::fs::read(out.join("node.raw")).unwrap(), data);
        for a in &arts {
            assert_eq!(a.sha256, crate::hash::sha256_file(&out.join(&a.file)).unwrap());
        }
        let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(out.join("node.qcow2")).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["format"], "qcow2");
        assert_eq!(v["format-specific"]["data"]["compression-type"], "zstd");
        let names: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // Every other format, from a disk named disk.raw as the working copy is.
        let wc = d.path().join("disk.raw");
        std::fs::write(&wc, &data).unwrap();
        let staging = Staging::create(&out, None).unwrap();
        let all = [Format::Vhd, Format::Vhdx, Format::RawZst, Format::RawGz, Format::Gce, Format::Raw];
        let arts = convert_all(&wc, staging.dir(), "n", &all, &plan(Qcow2Compression::None, 1)).unwrap();
        let names: Vec<String> = arts.iter().map(|a| a.file.clone()).collect();
        assert_eq!(names, ["n.vhd", "n.vhdx", "n.raw.zst", "n.raw.gz", "n.tar.gz", "n.raw"]);
        let sdir = staging.dir().to_path_buf();
        // Hashed while written (and the raw in the compressors' pass): the sums are the files'.
        for a in &arts {
            let p = sdir.join(&a.file);
            assert_eq!((a.sha256.as_str(), a.size), (crate::hash::sha256_file(&p).unwrap().as_str(), std::fs::metadata(&p).unwrap().len()), "{}", a.file);
        }
        assert_eq!(std::fs::read(sdir.join("n.raw")).unwrap(), data);
        // Standard gzip, whether pigz or gzip wrote it: gzip -t, and Python's gzip and tarfile.
        for f in ["n.raw.gz", "n.tar.gz"] {
            assert!(Command::new("gzip").arg("-t").arg(sdir.join(f)).status().unwrap().success(), "gzip -t {f}");
        }
        let py = "import gzip, hashlib, sys, tarfile\n\
                  print(hashlib.sha256(gzip.open(sys.argv[1]).read()).hexdigest())\n\
                  t = tarfile.open(sys.argv[2], 'r:gz')\n\
                  print(' '.join(m.name for m in t.getmembers()), hashlib.sha256(t.extractfile('disk.raw').read()).hexdigest())\n";
        let read = Command::new("python3").args(["-c", py]).arg(sdir.join("n.raw.gz")).arg(sdir.join("n.tar.gz")).output().unwrap();
        let sum = crate::hash::sha256_bytes(&data);
        assert_eq!(String::from_utf8_lossy(&read.stdout), format!("{sum}\ndisk.raw {sum}\n"), "{}", String::from_utf8_lossy(&read.stderr));
        let vhd: serde_json::Value = serde_json::from_slice(&Command::new("qemu-img").args(["info", "-f", "vpc", "--output=json"]).arg(sdir.join("n.vhd")).output().unwrap().stdout).unwrap();
        // A fixed VHD is the raw disk plus a 512-byte footer; its virtual size is 1 MiB-aligned.
        assert_eq!(vhd["virtual-size"].as_u64().unwrap(), data.len() as u64);
        assert_eq!(vhd["virtual-size"].as_u64().unwrap() % (1 << 20), 0);
        assert_eq!(std::fs::metadata(sdir.join("n.vhd")).unwrap().len(), data.len() as u64 + 512);
        let unz = Command::new("zstd").args(["-d", "-c", "-q"]).arg(sdir.join("n.raw.zst")).output().unwrap().stdout;
        assert_eq!(unz, data);
        let ungz = Command::new("gzip").args(["-d", "-c"]).arg(sdir.join("n.raw.gz")).output().unwrap().stdout;
        assert_eq!(ungz, data);
        let list = Command::new("tar").args(["-tvzf"]).arg(sdir.join("n.tar.gz")).output().unwrap().stdout;
        assert!(String::from_utf8_lossy(&list).trim().ends_with(" disk.raw"), "{}", String::from_utf8_lossy(&list));
        drop(staging);

        // A failing conversion leaves nothing behind.
        let staging = Staging::create(&out, None).unwrap();
        let e = convert_all(&d.path().join("missing.raw"), staging.dir(), "bad", &[Format::Qcow2], &plan(Qcow2Compression::None, 2));
        let e = format!("{:#}", e.unwrap_err());
        assert!(e.contains("missing.raw") && e.contains("No such file or directory"), "{e}");
        drop(staging);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);
    }
}
