//! `kib check --boot`: boots a built image under QEMU and checks what only a running node shows.
//!
//! The image is never written: QEMU boots a throwaway qcow2 overlay (`qemu-img create -b`) in a
//! work directory that is removed afterwards. A NoCloud seed (a vfat disk labelled CIDATA, made
//! with `mkfs.vfat` and `mcopy`, so nothing is mounted) carries a cloud-config whose `runcmd`
//! reports, one `KIB-BOOT key=value` line at a time, on the serial console: containerd's and the
//! kubelet's unit states, the modules and sysctls the manifest asks for, swap, failed units, the
//! images `ctr` lists, and the machine-id; then it powers the VM off. The host reads the console
//! log and turns the lines into the same [`Check`]s the offline check prints
//! ([`evaluate`]). Everything is bounded by a timeout, after which QEMU is killed.
//!
//! Acceleration: KVM when `/dev/kvm` opens and the guest's kernel prints its banner within
//! [`KVM_PROBE`]; otherwise (or with `--accel tcg`) TCG. amd64 images boot with
//! qemu-system-x86_64 (SeaBIOS, or OVMF when the disk boots only with UEFI), arm64 images with
//! qemu-system-aarch64 (`virt`, UEFI firmware from qemu-efi-aarch64).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::check::Check;
use crate::exec;
use crate::workdir::WorkDir;

/// How long a KVM boot may take to print the kernel banner before kib falls back to TCG.
pub const KVM_PROBE: Duration = Duration::from_secs(45);

/// The marker of the guest's report lines on the serial console.
pub const MARKER: &str = "KIB-BOOT ";
/// The guest's last report line.
pub const END: &str = "KIB-BOOT-END";

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if it works here, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// What the booted node must show, from the manifest and bom.json.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// Kernel modules that must be loaded (or built in): `/sys/module/<name>` exists.
    pub modules: Vec<String>,
    /// sysctl keys and the values they must have.
    pub sysctls: Vec<(String, String)>,
    /// Images `ctr -n k8s.io images ls` must list.
    pub images: Vec<String>,
    /// Whether the image is meant to run a kubelet: then it must be enabled but not running
    /// (no kubeadm configuration yet). A manifest that installs containerd but no kubelet, such
    /// as manifests/k8s-node-debian.yaml, gets no kubelet checks.
    pub kubelet: bool,
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: PathBuf,
    /// Debian architecture of the image: amd64 or arm64.
    pub arch: String,
    /// Boot with UEFI firmware (the disk has no BIOS boot path).
    pub uefi: bool,
    pub work_base: PathBuf,
    pub timeout: Duration,
    pub accel: Accel,
    pub memory_mib: u32,
    /// Keep the serial console log here.
    pub console_log: Option<PathBuf>,
}

/// A boot's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub accel: Accel,
    pub seconds: f64,
    pub checks: Vec<Check>,
}

/// The shell script the seed's runcmd runs; it writes its report to `tty`.
pub fn guest_script(expect: &Expect, tty: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        r#"#!/bin/sh
# Written by kib check --boot: reports the booted node's state on {tty}, then powers off.
tty={tty}
say() {{ printf '\n{MARKER}%s\n' "$*" > "$tty"; }}
# Wait (up to 180 s) until containerd has settled: active, failed, masked or absent.
for i in $(seq 1 90); do
  e=$(systemctl is-enabled containerd.service 2>/dev/null)
  a=$(systemctl is-active containerd.service 2>/dev/null)
  case "$e" in masked*|not-found|"") break ;; esac
  case "$a" in active|failed) break ;; esac
  sleep 2
done
say "containerd.enabled=$(systemctl is-enabled containerd.service 2>&1 | head -n1)"
say "containerd.active=$(systemctl is-active containerd.service 2>&1 | head -n1)"
say "kubelet.enabled=$(systemctl is-enabled kubelet.service 2>&1 | head -n1)"
say "kubelet.active=$(systemctl is-active kubelet.service 2>&1 | head -n1)"
say "swap=$(tail -n +2 /proc/swaps | wc -l)"
say "failed=$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{{print $1}}' | tr '\n' ' ')"
say "machine-id=$(cat /etc/machine-id 2>/dev/null)"
"#
    ));
    for m in &expect.modules {
        s.push_str(&format!("[ -d /sys/module/{m} ] && say 'module.{m}=loaded' || say 'module.{m}=missing'\n", m = shell_word(m)));
    }
    for (k, _) in &expect.sysctls {
        s.push_str(&format!("say \"sysctl.{k}=$(sysctl -n {k} 2>&1 | head -n1)\"\n", k = shell_word(k)));
    }
    s.push_str(
        r#"if command -v ctr >/dev/null 2>&1; then
  timeout 60 ctr -n k8s.io images ls -q > /run/kib-boot-images 2>&1; say "ctr.status=$?"
  while read -r img; do say "image=$img"; done < /run/kib-boot-images
else
  say "ctr.status=missing"
fi
"#,
    );
    s.push_str(&format!("printf '\\n{END}\\n' > \"$tty\"\nsystemctl --no-block poweroff\n"));
    s
}

/// Module and sysctl names go into the script unquoted: keep them to safe characters.
fn shell_word(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')).collect()
}

/// The seed's `user-data`.
pub fn user_data(expect: &Expect, tty: &str) -> String {
    let script = guest_script(expect, tty);
    let indented: String = script.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "#cloud-config\n# kib check --boot\nwrite_files:\n  - path: /run/kib-boot-check.sh\n    permissions: '0755'\n    content: |\n{indented}runcmd:\n  - [sh, /run/kib-boot-check.sh]\n"
    )
}

/// The `KIB-BOOT` report lines of a console log, as (key, value) in order. Lines the kernel
/// interleaved are skipped; only text after the marker counts.
pub fn report_lines(console: &str) -> Vec<(String, String)> {
    console
        .lines()
        .filter_map(|l| l.find(MARKER).map(|i| l[i + MARKER.len()..].trim_end_matches('\r')))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect()
}

/// Turns the guest's report into checks. A console without the end marker (the guest never got
/// that far) fails a `report complete` check, and every expected value it lacks fails too.
pub fn evaluate(console: &str, expect: &Expect) -> Vec<Check> {
    let lines = report_lines(console);
    let get = |k: &str| lines.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let mut out = Vec::new();
    let mut check = |name: String, ok: bool, detail: String| out.push(Check { name, ok, detail });
    let complete = console.contains(END);
    check("boot: report complete".into(), complete, if complete { String::new() } else { "the guest never reported; see the console log".into() });
    let v = |k: &str| get(k).unwrap_or("(not reported)").to_string();
    check("boot: containerd active".into(), get("containerd.active") == Some("active"), v("containerd.active"));
    check("boot: containerd enabled".into(), get("containerd.enabled") == Some("enabled"), v("containerd.enabled"));
    if expect.kubelet {
        check("boot: kubelet enabled".into(), get("kubelet.enabled") == Some("enabled"), v("kubelet.enabled"));
        // Without a kubeadm configuration the kubelet exits at once and systemd restarts it:
        // `activating`, never `active`.
        let kubelet = get("kubelet.active");
        check("boot: kubelet not running".into(), kubelet.is_some_and(|s| s != "active"), v("kubelet.active"));
    }
    check("boot: swap off".into(), get("swap") == Some("0"), format!("{} swap device(s)", v("swap")));
    let failed = get("failed");
    check("boot: no failed units".into(), failed == Some(""), failed.map_or("(not reported)".into(), str::to_string));
    let mid = get("machine-id").unwrap_or("");
    let fresh = mid.len() == 32 && mid.bytes().all(|b| b.is_ascii_hexdigit());
    check("boot: machine-id fresh".into(), fresh, if mid.is_empty() { "(empty)".into() } else { mid.to_string() });
    for m in &expect.modules {
        let k = format!("module.{}", shell_word(m));
        check(format!("boot: module {m} loaded"), get(&k) == Some("loaded"), v(&k));
    }
    for (key, want) in &expect.sysctls {
        let k = format!("sysctl.{}", shell_word(key));
        check(format!("boot: sysctl {key} = {want}"), get(&k) == Some(want.as_str()), v(&k));
    }
    let listed: Vec<&str> = lines.iter().filter(|(k, _)| k == "image").map(|(_, v)| v.as_str()).collect();
    let status = get("ctr.status");
    check("boot: ctr lists images".into(), status == Some("0"), format!("status {}, {} image(s)", v("ctr.status"), listed.len()));
    for img in &expect.images {
        check(format!("boot: image {img} listed by ctr"), listed.contains(&img.as_str()), String::new());
    }
    out
}

/// A running QEMU; killed (and reaped) on drop.
struct Vm {
    child: Option<Child>,
}

impl Vm {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn need_tool(name: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    if !found {
        bail!("kib check --boot needs `{name}` (Debian package {package})");
    }
    Ok(())
}

/// Makes the NoCloud seed: a 2 MiB vfat image labelled CIDATA holding user-data and meta-data,
/// written with mtools (nothing is mounted).
fn make_seed(dir: &Path, user_data: &str) -> Result<PathBuf> {
    need_tool("mkfs.vfat", "dosfstools")?;
    need_tool("mcopy", "mtools")?;
    let seed = dir.join("seed.img");
    std::fs::write(dir.join("user-data"), user_data)?;
    std::fs::write(dir.join("meta-data"), "instance-id: kib-boot-check\nlocal-hostname: kib-boot-check\n")?;
    exec::run(crate::exec::host_tool("mkfs.vfat").args(["-n", "CIDATA", "-C"]).arg(&seed).arg("2048"), "mkfs.vfat (NoCloud seed)", None)?;
    exec::run(Command::new("mcopy").arg("-i").arg(&seed).arg(dir.join("user-data")).arg(dir.join("meta-data")).arg("::"), "mcopy (NoCloud seed)", None)?;
    Ok(seed)
}

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The QEMU command line for one boot.
fn qemu_command(opts: &Options, dir: &Path, overlay: &Path, seed: &Path, console: &Path, accel: Accel) -> Result<Command> {
    let kvm = accel == Accel::Kvm;
    let mut c = match opts.arch.as_str() {
        "amd64" => {
            need_tool("qemu-system-x86_64", "qemu-system-x86")?;
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-machine", if kvm { "pc,accel=kvm" } else { "pc,accel=tcg" }]);
            c.args(["-cpu", if kvm { "host" } else { "max" }]);
            if opts.uefi {
                let (code, vars) = [("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"), ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd")]
                    .into_iter()
                    .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
                    .context("the image boots with UEFI and no OVMF firmware is installed (Debian package ovmf)")?;
                let vars_copy = dir.join("OVMF_VARS.fd");
                std::fs::copy(vars, &vars_copy).with_context(|| format!("copying {vars}"))?;
                c.arg("-drive").arg(format!("if=pflash,format=raw,readonly=on,file={code}"));
                c.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars_copy.display()));
            }
            c
        }
        "arm64" => {
            need_tool("qemu-system-aarch64", "qemu-system-arm")?;
            let mut c = Command::new("qemu-system-aarch64");
            let native = std::env::consts::ARCH == "aarch64";
            c.args(["-machine", if kvm && native { "virt,accel=kvm" } else { "virt,accel=tcg" }]);
            c.args(["-cpu", if kvm && native { "host" } else { "max" }]);
            let fw = first_existing(&["/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", "/usr/share/AAVMF/AAVMF_CODE.fd"])
                .context("an arm64 boot needs UEFI firmware (Debian package qemu-efi-aarch64)")?;
            c.arg("-bios").arg(fw);
            c
        }
        other => bail!("kib check --boot boots amd64 and arm64 images; this one is {other}"),
    };
    c.args(["-m", &opts.memory_mib.to_string(), "-smp", "2", "-display", "none", "-monitor", "none", "-parallel", "none", "-no-reboot"]);
    c.arg("-serial").arg(format!("file:{}", console.display()));
    c.arg("-drive").arg(format!("file={},format=qcow2,if=virtio,cache=unsafe", overlay.display()));
    c.arg("-drive").arg(format!("file={},format=raw,if=virtio,readonly=on", seed.display()));
    // DHCP from QEMU itself; nothing leaves this machine.
    c.args(["-nic", "user,model=virtio-net-pci,restrict=on"]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    Ok(c)
}

/// Whether KVM can be opened here.
fn kvm_available() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

enum Outcome {
    /// The guest printed its end marker, or QEMU exited (the guest powered off).
    Done,
    /// KVM never printed the kernel banner: try TCG.
    KvmStuck,
}

/// Boots `opts.image` and checks it against `expect`.
///
/// Errors: a tool is missing (qemu-system, mkfs.vfat, mcopy, firmware), the overlay or seed
/// cannot be made, QEMU cannot start or exits with an error before the guest reported, kib is
/// interrupted. A guest that never reports is not an error: its checks fail, and the console
/// tail is logged.
pub fn run(opts: &Options, expect: &Expect) -> Result<Report> {
    let t0 = Instant::now();
    let work = WorkDir::create(&opts.work_base)?;
    let dir = work.path().to_path_buf();
    let image = std::path::absolute(&opts.image).with_context(|| format!("resolving {}", opts.image.display()))?;
    let format = crate::phase0::workcopy::inspect(&image)?.format;
    let overlay = dir.join("overlay.qcow2");
    exec::run(
        Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", &format, "-b"]).arg(&image).arg(&overlay),
        "qemu-img create (throwaway overlay)",
        Some(Duration::from_secs(60)),
    )?;
    let tty = if opts.arch == "arm64" { "/dev/ttyAMA0" } else { "/dev/ttyS0" };
    let seed = make_seed(&dir, &user_data(expect, tty))?;
    let console = dir.join("console.log");
    let mut accel = match opts.accel {
        Accel::Auto if kvm_available() => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        a => a,
    };
    let deadline = t0 + opts.timeout;
    loop {
        tracing::info!("booting {} under {} ({} MiB); up to {}s", opts.image.display(), if accel == Accel::Kvm { "KVM" } else { "TCG" }, opts.memory_mib, opts.timeout.as_secs());
        std::fs::write(&console, b"")?;
        let mut cmd = qemu_command(opts, &dir, &overlay, &seed, &console, accel)?;
        let child = cmd.spawn().context("starting QEMU")?;
        let mut vm = Vm { child: Some(child) };
        let started = Instant::now();
        let outcome = loop {
            if let Some(sig) = exec::interrupted() {
                bail!("interrupted by signal {sig} while the VM was booting");
            }
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            if text.contains(END) {
                // Give the guest a moment to power off by itself.
                let until = Instant::now() + Duration::from_secs(20);
                while Instant::now() < until {
                    if vm.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                break Outcome::Done;
            }
            if let Some(status) = vm.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let mut err = String::new();
                if let Some(mut e) = vm.child.take().and_then(|mut c| c.stderr.take()) {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                if !status.success() {
                    bail!("QEMU exited with {status} before the guest reported: {}", err.trim());
                }
                break Outcome::Done;
            }
            if accel == Accel::Kvm && opts.accel == Accel::Auto && started.elapsed() > KVM_PROBE && !text.contains("Linux version") {
                break Outcome::KvmStuck;
            }
            if Instant::now() > deadline {
                tracing::warn!("the guest did not report within {}s; stopping QEMU", opts.timeout.as_secs());
                break Outcome::Done;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        vm.kill();
        match outcome {
            Outcome::KvmStuck => {
                tracing::warn!("KVM: no kernel output after {}s; booting again under TCG", KVM_PROBE.as_secs());
                accel = Accel::Tcg;
                // The overlay may hold a half-booted guest's writes: start from a fresh one.
                std::fs::remove_file(&overlay)?;
                exec::run(
                    Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", &format, "-b"]).arg(&image).arg(&overlay),
                    "qemu-img create (throwaway overlay)",
                    Some(Duration::from_secs(60)),
                )?;
            }
            Outcome::Done => break,
        }
    }
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    if let Some(keep) = &opts.console_log {
        let mut f = std::fs::File::create(keep).with_context(|| format!("writing {}", keep.display()))?;
        f.write_all(text.as_bytes())?;
    }
    let checks = evaluate(&text, expect);
    if checks.iter().any(|c| !c.ok) {
        let tail: Vec<&str> = text.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect();
        tracing::warn!("console tail:\n{}", tail.join("\n"));
    }
    work.close()?;
    Ok(Report { accel, seconds: (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0, checks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        Expect {
            modules: vec!["overlay".into(), "br_netfilter".into()],
            sysctls: vec![("net.ipv4.ip_forward".into(), "1".into())],
            images: vec!["registry.k8s.io/pause:3.9".into()],
            kubelet: true,
        }
    }

    #[test]
    fn user_data_is_cloud_config_with_the_script() {
        let u = user_data(&expect(), "/dev/ttyS0");
        assert!(u.starts_with("#cloud-config\n"));
        let v: serde_json::Value = yaml_serde::from_str(&u).unwrap();
        let script = v["write_files"][0]["content"].as_str().unwrap();
        assert_eq!(script, guest_script(&expect(), "/dev/ttyS0"));
        assert!(script.contains("[ -d /sys/module/br_netfilter ]") && script.contains("sysctl -n net.ipv4.ip_forward"));
        assert_eq!(v["runcmd"][0][1], "/run/kib-boot-check.sh");
        // The script is valid sh.
        let ok = Command::new("sh").arg("-n").arg("-c").arg(script).status().unwrap();
        assert!(ok.success());
    }

    fn console(containerd: &str) -> String {
        format!(
            "[    0.000000] Linux version 6.1.0\n\nKIB-BOOT containerd.enabled={e}\nKIB-BOOT containerd.active={containerd}\n\
             KIB-BOOT kubelet.enabled=enabled\n[  61.2] random: crng init done KIB-BOOT kubelet.active=activating\r\nKIB-BOOT swap=0\n\
             KIB-BOOT failed=\nKIB-BOOT machine-id=0123456789abcdef0123456789abcdef\nKIB-BOOT module.overlay=loaded\n\
             KIB-BOOT module.br_netfilter=loaded\nKIB-BOOT sysctl.net.ipv4.ip_forward=1\nKIB-BOOT ctr.status=0\n\
             KIB-BOOT image=registry.k8s.io/pause:3.9\nKIB-BOOT-END\n",
            e = if containerd == "active" { "enabled" } else { "masked" }
        )
    }

    #[test]
    fn a_healthy_report_passes_every_check() {
        let checks = evaluate(&console("active"), &expect());
        let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
        assert!(failed.is_empty(), "{failed:#?}");
        assert_eq!(checks.len(), 13);
    }

    #[test]
    fn masked_containerd_and_a_silent_guest_fail() {
        let checks = evaluate(&console("inactive"), &expect());
        let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
        assert_eq!(failed, ["boot: containerd active", "boot: containerd enabled"]);
        let silent = evaluate("[    0.000000] Linux version 6.1.0\n", &expect());
        assert!(silent.iter().all(|c| !c.ok), "{silent:#?}");
        // A running kubelet, swap, and a failed unit are caught.
        let bad = console("active").replace("kubelet.active=activating", "kubelet.active=active").replace("swap=0", "swap=1").replace("failed=\n", "failed=foo.service \n");
        let failed: Vec<String> = evaluate(&bad, &expect()).into_iter().filter(|c| !c.ok).map(|c| c.name).collect();
        assert_eq!(failed, ["boot: kubelet not running", "boot: swap off", "boot: no failed units"]);
    }

    #[test]
    fn an_image_without_a_kubelet_gets_no_kubelet_checks() {
        let no_kubelet = Expect { kubelet: false, ..expect() };
        // The guest reports a missing unit; nothing checks it.
        let report = console("active").replace("kubelet.enabled=enabled", "kubelet.enabled=").replace("kubelet.active=activating", "kubelet.active=inactive");
        let checks = evaluate(&report, &no_kubelet);
        assert!(checks.iter().all(|c| c.ok && !c.name.contains("kubelet")), "{checks:#?}");
        assert_eq!(checks.len(), 11);
    }
}
