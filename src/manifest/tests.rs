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
