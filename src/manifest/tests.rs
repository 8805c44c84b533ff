use super::*;
use std::fs;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    p
}

const TOP: &str = r#"apiVersion: kib/v1
kind: ImageManifest
metadata: {name: node}
variables:
  pause_image: registry.k8s.io/pause:3.9
include: [phases/kernel.yaml]
steps:
  - name: tools
    packages: {install: [jq, "chrony=4.3-2"]}
  - name: crictl config
    file: {path: /etc/crictl.yaml, content: "image: ${pause_image}\n", mode: "0600"}
output: {formats: [qcow2, raw]}
"#;

const KERNEL: &str = r#"apiVersion: kib/v1
kind: Phase
variables: {pause_image: overridden-by-top, modules_file: k8s.conf}
steps:
  - name: modules
    kernel-modules: {file: "${modules_file}", load: [overlay, br_netfilter]}
  - name: only arm
    when: {arch: [arm64]}
    run: {script: "echo $pause_image"}
"#;

#[test]
fn loads_includes_in_order_with_variables() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "phases/kernel.yaml", KERNEL);
    let top = write(d.path(), "manifests/node.yaml", TOP);
    let m = load(&top, &["pause_image=mirror/pause:3.9".into()]).unwrap();
    assert_eq!(m.name, "node");
    let names: Vec<_> = m.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["modules", "only arm", "tools", "crictl config"]);
    assert_eq!(m.variables.0["pause_image"], "mirror/pause:3.9");
    assert_eq!(m.files.len(), 2);
    assert_eq!(m.output.formats, [crate::format::Format::Qcow2, crate::format::Format::Raw]);
    assert!(m.sysprep.enabled);
    let Action::File(f) = m.steps[3].action.expand(&m.variables).unwrap() else { panic!("not a file step") };
    assert_eq!(f.content.unwrap(), "image: mirror/pause:3.9\n");
    assert!(!m.steps[1].applies(&["debian".into()], "amd64", &m.variables));
    assert!(m.steps[1].applies(&["debian".into()], "arm64", &m.variables));
    assert_eq!(m.steps[0].timeout, DEFAULT_STEP_TIMEOUT);
}

#[test]
fn unknown_field_names_file_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "m.yaml",
        "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: tools\n    packages:\n      instal: [jq]\n",
    );
    let e = load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("m.yaml:6:"), "{e}");
    assert!(e.contains("unknown field `instal`"), "{e}");
    assert!(e.contains("steps[0].packages"), "{e}");
}

#[test]
fn type_error_names_file_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "m.yaml",
        "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: tools\n    packages:\n      install: jq\n",
    );
    let e = load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("m.yaml:6:"), "{e}");
    assert!(e.contains("steps[0].packages.install"), "{e}");
    assert!(e.contains("invalid type"), "{e}");
}

#[test]
fn step_needs_exactly_one_action() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "m.yaml",
        "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: two\n    run: {script: x}\n    packages: {install: [a]}\n",
    );
    let e = load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("step 1 (`two`)") && e.contains("found packages, run"), "{e}");
    let p = write(d.path(), "n.yaml", "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: none\n");
    assert!(load(&p, &[]).unwrap_err().to_string().contains("found none"));
}

#[test]
fn include_cycle_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.yaml", "apiVersion: kib/v1\nkind: Phase\ninclude: [b.yaml]\n");
    write(d.path(), "b.yaml", "apiVersion: kib/v1\nkind: Phase\ninclude: [a.yaml]\n");
    let top = write(d.path(), "top.yaml", "apiVersion: kib/v1\nkind: ImageManifest\ninclude: [a.yaml]\n");
    let e = load(&top, &[]).unwrap_err().to_string();
    assert!(e.starts_with("manifest includes itself"), "{e}");
    assert!(e.contains("a.yaml -> ") && e.contains("b.yaml -> "), "{e}");
    let selfish = write(d.path(), "self.yaml", "apiVersion: kib/v1\nkind: ImageManifest\ninclude: [self.yaml]\n");
    assert!(load(&selfish, &[]).unwrap_err().to_string().starts_with("manifest includes itself"));
}

#[test]
fn missing_include_lists_where_it_looked() {
    let d = tempfile::tempdir().unwrap();
    let top = write(d.path(), "m/top.yaml", "apiVersion: kib/v1\nkind: ImageManifest\ninclude: [phases/x.yaml]\n");
    let e = load(&top, &[]).unwrap_err().to_string();
    assert!(e.contains("include `phases/x.yaml` not found") && e.contains("m/phases/x.yaml"), "{e}");
}

#[test]
fn undefined_variable_names_line_and_step() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "m.yaml",
        "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: pin\n    packages: {install: [\"kubelet=${kubernetes_verison}\"]}\n",
    );
    let e = load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("m.yaml:5: step `pin`: undefined variable `${kubernetes_verison}`"), "{e}");
}

#[test]
fn builtin_variables_are_known_and_set_checks_names() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "m.yaml",
        "apiVersion: kib/v1\nkind: ImageManifest\nvariables: {v: \"1\"}\nsteps:\n  - name: a\n    file: {path: \"/opt/${arch}/${os_id}\", content: x}\n",
    );
    assert!(load(&p, &[]).is_ok());
    let e = load(&p, &["w=2".into()]).unwrap_err().to_string();
    assert!(e.contains("no variable `w`") && e.contains("it has: v"), "{e}");
    assert!(load(&p, &["novalue".into()]).unwrap_err().to_string().contains("expected NAME=VALUE"));
}

#[test]
fn bad_values_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let head = "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: s\n";
    for (body, want) in [
        ("    file: {path: etc/x, content: a}\n", "must be absolute"),
        ("    file: {path: /x, content: a, mode: \"0999\"}\n", "not an octal permission"),
        ("    file: {path: /x}\n", "exactly one of `content` and `source`"),
        ("    timeout: soon\n    run: {script: x}\n", "timeout `soon`"),
    ] {
        let p = write(d.path(), "m.yaml", &format!("{head}{body}"));
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains(want), "{body}: {e}");
    }
    let p = write(d.path(), "v.yaml", "apiVersion: kib/v2\nkind: ImageManifest\n");
    assert!(load(&p, &[]).unwrap_err().to_string().contains("apiVersion `kib/v2`"));
    let p = write(d.path(), "k.yaml", "apiVersion: kib/v1\nkind: Phase\n");
    assert!(load(&p, &[]).unwrap_err().to_string().contains("kind must be `ImageManifest`"));
}

#[test]
fn when_variables_and_per_arch_sums() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "m.yaml",
        r#"apiVersion: kib/v1
kind: ImageManifest
variables: {kubernetes_source: pkg}
steps:
  - name: http only
    when: {variables: {kubernetes_source: http}}
    download:
      url: https://dl.k8s.io/kubelet
      sha256: {amd64: "aaaa", arm64: "bbbb"}
      path: /usr/bin/kubelet
  - name: repo
    repository: {name: kubernetes, url: "https://pkgs.k8s.io/core:/stable:/v1.30/deb/", key_url: "https://pkgs.k8s.io/core:/stable:/v1.30/deb/Release.key"}
"#,
    );
    let m = load(&p, &[]).unwrap();
    assert!(!m.steps[0].applies(&[], "amd64", &m.variables));
    let m2 = load(&p, &["kubernetes_source=http".into()]).unwrap();
    assert!(m2.steps[0].applies(&[], "amd64", &m2.variables));
    let Action::Download(dl) = &m.steps[0].action else { panic!() };
    assert_eq!(dl.sha256.as_ref().unwrap().for_arch("arm64").unwrap(), "bbbb");
    assert!(dl.sha256.as_ref().unwrap().for_arch("riscv64").unwrap_err().contains("amd64, arm64"));
    let bad = write(d.path(), "b.yaml", "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: x\n    when: {variables: {nope: a}}\n    run: {script: x}\n");
    assert!(load(&bad, &[]).unwrap_err().to_string().contains("names `nope`, which no file declares"));
}

#[test]
fn disk_sizes_are_binary_and_rounded_up_to_a_mib() {
    assert_eq!(parse_disk_size("20GiB").unwrap(), 20 << 30);
    assert_eq!(parse_disk_size("20G").unwrap(), 20 << 30);
    assert_eq!(parse_disk_size("20 GB").unwrap(), 20 << 30);
    assert_eq!(parse_disk_size("1000000").unwrap(), 1 << 20);
    assert!(parse_disk_size("0").unwrap_err().contains("zero"));
    assert!(parse_disk_size("big").unwrap_err().contains("not a size"));
}

#[test]
fn parse_str_checks_like_load_without_touching_disk() {
    let origin = Path::new("/nonexistent/kib/node.yaml");
    let text = TOP.replace("include: [phases/kernel.yaml]\n", "");
    let m = parse_str(&text, origin, &["pause_image=mirror/pause".into()]).unwrap();
    assert_eq!(m.path, origin);
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.variables.0["pause_image"], "mirror/pause");
    assert_eq!(m.steps.len(), 2);
    // The same file from disk gives the same result.
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "node.yaml", &text);
    assert_eq!(load(&p, &[]).unwrap().sha256, m.sha256);
    // Errors keep the origin's name and the line.
    let e = parse_str("apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: x\n    bogus: 1\n", origin, &[]).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/kib/node.yaml:5:"), "{e}");
    let e = parse_str("apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: x\n    file: {path: /a, content: \"${nope}\"}\n", origin, &[]).unwrap_err();
    assert!(e.to_string().contains("node.yaml:5: step `x`: undefined variable `${nope}`"), "{e}");
    // Includes are refused, with the include named.
    let e = parse_str(TOP, origin, &[]).unwrap_err().to_string();
    assert!(e.contains("include `phases/kernel.yaml`") && e.contains("parsed from text"), "{e}");
}

#[test]
fn typed_output_and_package_manager_fields_report_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "ok.yaml", "apiVersion: kib/v1\nkind: ImageManifest\npackages: {manager: dnf}\noutput: {formats: [raw.zst, gce], qcow2_compression: zlib}\n");
    let m = load(&p, &[]).unwrap();
    assert_eq!(m.packages.manager, Some(ManagerKind::Dnf));
    assert_eq!(m.output.formats, [crate::format::Format::RawZst, crate::format::Format::Gce]);
    assert_eq!(m.output.qcow2_compression, Some(crate::format::Qcow2Compression::Zlib));
    for (name, body, want) in [
        ("pm.yaml", "packages:\n  manager: pacman\n", ":4:12: packages.manager: unknown variant `pacman`, expected one of `apt`, `dnf`, `yum`, `tdnf`, `zypper`"),
        ("fmt.yaml", "output:\n  formats: [qcow2, qcow3]\n", ":4:20: output.formats[1]: unknown variant `qcow3`"),
        ("cmp.yaml", "output:\n  qcow2_compression: lz4\n", ":4:22: output.qcow2_compression: unknown variant `lz4`"),
    ] {
        let p = write(d.path(), name, &format!("apiVersion: kib/v1\nkind: ImageManifest\n{body}"));
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()) && e.contains(want), "{name}: {e}");
    }
    let p = write(d.path(), "phase.yaml", "apiVersion: kib/v1\nkind: Phase\npackages: {manager: apt}\n");
    let top = write(d.path(), "top.yaml", "apiVersion: kib/v1\nkind: ImageManifest\ninclude: [phase.yaml]\n");
    let _ = p;
    let e = load(&top, &[]).unwrap_err().to_string();
    assert!(e.contains("a `Phase` file cannot have `output`, `sysprep`, `disk` or `packages`"), "{e}");
}

/// The shipped profiles, as `--provider` applies them to the shipped 1.30 manifest.
fn repo_manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/k8s-1.30.yaml")
}

#[test]
fn provider_flag_appends_the_profile_after_the_includes() {
    let m = load_with(&repo_manifest(), &[], Some("vsphere")).unwrap();
    let (path, p) = m.provider.clone().expect("a provider");
    assert_eq!(p.name, "ova");
    assert!(path.ends_with("phases/providers/ova.yaml"), "{}", path.display());
    assert_eq!(p.formats, [crate::format::Format::Ova]);
    // Loaded after every include of the manifest: its file comes after provenance.yaml.
    let pos = |suffix: &str| m.files.iter().position(|f| f.path.ends_with(suffix)).unwrap_or_else(|| panic!("{suffix} not loaded"));
    assert!(pos("phases/providers/ova.yaml") > pos("phases/node/provenance.yaml"));
    // Its steps run after the includes' steps.
    let first_ova = m.steps.iter().position(|s| s.origin.ends_with("phases/providers/ova.yaml")).unwrap();
    let last_images = m.steps.iter().rposition(|s| s.origin.ends_with("phases/kubernetes/images.yaml")).unwrap();
    assert!(first_ova > last_images);
    // Its variables win over the phases' defaults.
    assert_eq!(m.variables.0["kib_provider"], "ova");
    assert_eq!(m.variables.0["provider_kernel_args_amd64"], "console=tty1 console=ttyS0");
    // --set still wins over the profile.
    let m = load_with(&repo_manifest(), &["provider_kernel_args_amd64=quiet".into()], Some("qemu")).unwrap();
    assert_eq!(m.variables.0["provider_kernel_args_amd64"], "quiet");
    assert_eq!(m.provider.unwrap().1.name, "qemu");
}

#[test]
fn every_shipped_profile_loads_with_its_name_and_formats() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("phases/providers");
    let profiles = provider::profiles_in(&dir);
    let names: Vec<&str> = profiles.iter().map(|(_, p)| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ami", "azure", "digitalocean", "gce", "hcloud", "huaweicloud", "maas", "nutanix", "oci", "openstack", "outscale", "ova",
            "powervs", "proxmox", "qemu", "raw", "scaleway", "vultr"
        ]
    );
    for (path, p) in &profiles {
        assert_eq!(path.file_stem().unwrap().to_str().unwrap(), p.name, "a profile's name is its file's stem");
        assert!(!p.formats.is_empty(), "{}: no formats", p.name);
        let m = load_with(&repo_manifest(), &[], Some(&p.name)).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(m.provider.as_ref().unwrap().1, *p);
        assert_eq!(m.variables.0["kib_provider"], p.name);
    }
    // EKS Anywhere's --hypervisor words are aliases.
    for (alias, name) in [("vsphere", "ova"), ("baremetal", "raw"), ("nutanix", "nutanix")] {
        assert!(provider::find(&repo_manifest(), alias).unwrap().ends_with(format!("{name}.yaml")), "{alias}");
    }
}

#[test]
fn unknown_provider_lists_the_known_ones() {
    let e = load_with(&repo_manifest(), &[], Some("vsfear")).unwrap_err().to_string();
    assert!(e.contains("unknown provider `vsfear`"), "{e}");
    assert!(e.contains("ova (vsphere, vmware)") && e.contains("qemu (kvm, libvirt)") && e.contains("vultr"), "{e}");
    let e = load_with(&repo_manifest(), &[], Some("../etc")).unwrap_err().to_string();
    assert!(e.contains("plain name"), "{e}");
}

#[test]
fn manifest_provider_is_overridden_by_the_flag_and_checked_by_kind() {
    let d = tempfile::tempdir().unwrap();
    let profile = |name: &str| {
        format!("apiVersion: kib/v1\nkind: Phase\nprovider: {{name: {name}, aliases: [{name}-alias], formats: [vhd], arches: [amd64]}}\nvariables: {{who: {name}}}\nsteps:\n  - name: {name} file\n    file: {{path: /etc/{name}, content: x}}\n")
    };
    write(d.path(), "phases/providers/one.yaml", &profile("one"));
    write(d.path(), "phases/providers/two.yaml", &profile("two"));
    let top = write(
        d.path(),
        "manifests/m.yaml",
        "apiVersion: kib/v1\nkind: ImageManifest\nprovider: one\nvariables: {who: me}\nsteps:\n  - name: own\n    file: {path: /etc/own, content: x}\noutput: {formats: [raw]}\n",
    );
    let m = load(&top, &[]).unwrap();
    assert_eq!(m.provider.as_ref().unwrap().1.name, "one");
    assert_eq!(m.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["one file", "own"]);
    assert_eq!(m.variables.0["who"], "me", "the manifest's own variables win over the profile's");
    let m = load_with(&top, &[], Some("two-alias")).unwrap();
    assert_eq!(m.provider.as_ref().unwrap().1.name, "two");
    // A manifest may not hold a profile section, a Phase may not name one.
    let bad = write(d.path(), "manifests/bad.yaml", "apiVersion: kib/v1\nkind: ImageManifest\nprovider: {name: x}\n");
    assert!(load(&bad, &[]).unwrap_err().to_string().contains("is the name of a provider profile"));
    // Two profiles in one build.
    let both = write(d.path(), "manifests/both.yaml", "apiVersion: kib/v1\nkind: ImageManifest\ninclude: [phases/providers/one.yaml]\nprovider: two\n");
    let e = load(&both, &[]).unwrap_err().to_string();
    assert!(e.contains("two provider profiles"), "{e}");
    // The same profile named and included is one.
    let same = write(d.path(), "manifests/same.yaml", "apiVersion: kib/v1\nkind: ImageManifest\ninclude: [phases/providers/one.yaml]\nprovider: one\n");
    assert_eq!(load(&same, &[]).unwrap().steps.len(), 1);
}
