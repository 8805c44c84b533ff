use std::path::{Path, PathBuf};

use super::*;

const SUM_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SUM_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A folder with two tiny "images" (amd64 with a SHA256SUMS beside it, arm64 pinned in the
/// matrix), a phase file, and two manifests including it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("img/amd64")).unwrap();
        std::fs::create_dir_all(d.join("img/arm64")).unwrap();
        std::fs::write(d.join("img/amd64/disk.raw"), b"not read by plan").unwrap();
        std::fs::write(d.join("img/amd64/SHA256SUMS"), format!("{SUM_A}  disk.raw\n")).unwrap();
        std::fs::write(d.join("img/arm64/disk.raw"), b"nor this").unwrap();
        std::fs::create_dir_all(d.join("phases")).unwrap();
        std::fs::write(
            d.join("phases/common.yaml"),
            "apiVersion: kib/v1\nkind: Phase\nvariables: {greeting: hello}\nsteps:\n  - name: greet\n    file: {path: /etc/greeting, content: \"${greeting}\\n\"}\n",
        )
        .unwrap();
        std::fs::write(d.join("phases/motd"), "welcome\n").unwrap();
        for m in ["one", "two"] {
            std::fs::write(
                d.join(format!("{m}.yaml")),
                format!(
                    "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {{name: {m}}}\ninclude: [phases/common.yaml]\nsteps:\n  - name: motd\n    file: {{path: /etc/motd, source: phases/motd}}\noutput: {{formats: [raw]}}\n"
                ),
            )
            .unwrap();
        }
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Writes `matrix.yaml` with the standard head and `extra` lines, and loads it.
    fn plan(&self, extra: &str) -> Result<Plan> {
        self.plan_as(extra, "0.1.0")
    }

    fn plan_as(&self, extra: &str, version: &str) -> Result<Plan> {
        let text = format!("{}{extra}", self.head());
        let p = self.path("matrix.yaml");
        std::fs::write(&p, text).unwrap();
        Plan::load(&p, &LoadOptions { output_dir: None, kib_version: version.into(), fetcher: None })
    }

    fn head(&self) -> String {
        format!(
            "apiVersion: kib/v1\nkind: ImageMatrix\nbases:\n  deb:\n    amd64: {{path: img/amd64/disk.raw}}\n    arm64: {{path: img/arm64/disk.raw, sha256: {SUM_B}}}\nmanifests: [one.yaml, two.yaml]\narches: [amd64, arm64]\n"
        )
    }
}

fn names(p: &Plan) -> Vec<&str> {
    p.builds.iter().map(|b| b.name.as_str()).collect()
}

fn keys(p: &Plan) -> Vec<String> {
    p.builds.iter().map(|b| b.key.clone()).collect()
}

fn err(r: Result<Plan>) -> String {
    format!("{:#}", r.expect_err("the matrix must be refused"))
}

#[test]
fn expands_every_combination_in_axis_order() {
    let f = Fixture::new();
    let p = f.plan("").unwrap();
    assert_eq!(names(&p), ["one-deb-amd64", "one-deb-arm64", "two-deb-amd64", "two-deb-arm64"]);
    assert_eq!(p.builds.iter().map(|b| b.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let b = &p.builds[1];
    assert_eq!(b.arch, Arch::Arm64);
    assert_eq!(b.input.sha256, SUM_B);
    assert_eq!(b.input.sha256_from, "sha256");
    assert_eq!(p.builds[0].input.sha256, SUM_A);
    assert!(p.builds[0].input.sha256_from.ends_with("img/amd64/SHA256SUMS"), "{}", p.builds[0].input.sha256_from);
    // The manifest's own formats, when the matrix names none.
    assert_eq!(b.formats, [Format::Raw]);
    assert_eq!(b.outputs, ["one-deb-arm64.raw", "bom.json", "one-deb-arm64.spdx.json", "one-deb-arm64.cdx.json", "SHA256SUMS"]);
    assert_eq!(p.output_dir, Path::new(DEFAULT_OUTPUT_DIR));
    assert!(p.build(4).unwrap_err().to_string().contains("--index 4 is out of range: ") && p.build(3).is_ok());
    assert!(p.build(9).unwrap_err().to_string().ends_with("has 4 builds (indexes 0 to 3)"));
}

#[test]
fn exclusion_removes_matching_combinations_and_refuses_dead_entries() {
    let f = Fixture::new();
    let p = f.plan("exclude:\n  - {manifest: two, arch: arm64}\n").unwrap();
    assert_eq!(names(&p), ["one-deb-amd64", "one-deb-arm64", "two-deb-amd64"]);
    let p = f.plan("exclude:\n  - {arch: [arm64]}\n").unwrap();
    assert_eq!(names(&p), ["one-deb-amd64", "two-deb-amd64"]);
    // Indexes stay dense after exclusion.
    assert_eq!(p.builds[1].index, 1);
    let e = err(f.plan("exclude:\n  - {manifest: three}\n"));
    assert!(e.contains("exclude entry 1: matches nothing: manifest: three (the manifests are: one, two)"), "{e}");
    let e = err(f.plan("exclude:\n  - {arch: arm64}\n  - {base: deb, provider: aws}\n"));
    assert!(e.contains("exclude entry 2: matches nothing: provider: aws (the providers are: none)"), "{e}");
    let e = err(f.plan("exclude:\n  - {}\n"));
    assert!(e.contains("exclude entry 1 names no axis"), "{e}");
    let e = err(f.plan("exclude:\n  - {arch: arm64}\n  - {arch: amd64}\n"));
    assert!(e.contains("removes every build"), "{e}");
    // Overlapping entries are fine.
    let p = f.plan("exclude:\n  - {arch: arm64}\n  - {arch: arm64, manifest: one}\n").unwrap();
    assert_eq!(names(&p), ["one-deb-amd64", "two-deb-amd64"]);
}

#[test]
fn naming_pattern_and_its_refusals() {
    let f = Fixture::new();
    let p = f.plan("output: {name: \"node-<arch>-<manifest>\", dir: /tmp/x}\n").unwrap();
    assert_eq!(names(&p), ["node-amd64-one", "node-arm64-one", "node-amd64-two", "node-arm64-two"]);
    assert_eq!(p.output_dir, Path::new("/tmp/x"));
    let e = err(f.plan("output: {name: \"node-<arch>\"}\n"));
    assert!(e.contains("gives two builds the name `node-amd64` (0 and 2)"), "{e}");
    let e = err(f.plan("output: {name: \"../<arch>-<manifest>\"}\n"));
    assert!(e.contains("not a plain file name"), "{e}");
    let p = f.plan("providers: [qemu, vsphere]\nexclude:\n  - {provider: vsphere, arch: arm64}\n").unwrap();
    assert_eq!(
        names(&p),
        ["one-deb-amd64-qemu", "one-deb-amd64-vsphere", "one-deb-arm64-qemu", "two-deb-amd64-qemu", "two-deb-amd64-vsphere", "two-deb-arm64-qemu"]
    );
    assert!(glob_match("one-*", "one-deb-arm64") && glob_match("*-arm64", "two-deb-arm64") && glob_match("?ne*", "one"));
    assert!(!glob_match("one-*", "two-deb-arm64") && !glob_match("*-amd64", "one-deb-arm64"));
}

#[test]
fn variables_and_overrides_become_set_arguments() {
    let f = Fixture::new();
    let p = f.plan("variables: {greeting: hi}\noverrides:\n  - when: {arch: arm64, manifest: two}\n    variables: {greeting: servus}\n    formats: [qcow2, ova]\n").unwrap();
    assert_eq!(p.builds[0].set_args(), ["greeting=hi"]);
    assert_eq!(p.builds[3].set_args(), ["greeting=servus"]);
    assert_eq!(p.builds[3].formats, [Format::Qcow2, Format::Ova]);
    assert_eq!(p.builds[3].key_input.variables["greeting"], "servus");
    // A variable the manifest does not declare is refused before anything runs.
    let e = err(f.plan("variables: {nope: x}\n"));
    assert!(e.contains("build one-deb-amd64") && e.contains("--set nope: the manifest has no variable `nope`"), "{e}");
}

#[test]
fn build_keys_change_with_each_input_and_only_then() {
    let f = Fixture::new();
    let base = keys(&f.plan("").unwrap());
    // Stable: the same inputs give the same keys, and every build's key differs.
    assert_eq!(keys(&f.plan("").unwrap()), base);
    let mut uniq = base.clone();
    uniq.dedup();
    assert_eq!(uniq.len(), 4);
    assert!(base.iter().all(|k| k.len() == 64));

    // kib's version: every key.
    let other = keys(&f.plan_as("", "0.2.0").unwrap());
    assert!(other.iter().zip(&base).all(|(a, b)| a != b));

    // A variable: every build (all manifests declare it through the phase).
    let changed = keys(&f.plan("variables: {greeting: hi}\n").unwrap());
    assert!(changed.iter().zip(&base).all(|(a, b)| a != b));
    // The same variable, only for arm64: exactly the arm64 builds.
    let changed = keys(&f.plan("overrides:\n  - when: {arch: arm64}\n    variables: {greeting: hi}\n").unwrap());
    assert_eq!(changed.iter().zip(&base).map(|(a, b)| a != b).collect::<Vec<_>>(), [false, true, false, true]);
    // Setting a variable to its default changes nothing the build does, but is still recorded:
    // the resolved variables are what count, so the key stays.
    assert_eq!(keys(&f.plan("variables: {greeting: hello}\n").unwrap()), base);

    // The format: only the builds whose formats change.
    let changed = keys(&f.plan("overrides:\n  - when: {manifest: one}\n    formats: [qcow2]\n").unwrap());
    assert_eq!(changed.iter().zip(&base).map(|(a, b)| a != b).collect::<Vec<_>>(), [true, true, false, false]);

    // The input image's sum (its SHA256SUMS entry): the amd64 builds.
    std::fs::write(f.path("img/amd64/SHA256SUMS"), format!("{SUM_B}  disk.raw\n")).unwrap();
    let changed = keys(&f.plan("").unwrap());
    assert_eq!(changed.iter().zip(&base).map(|(a, b)| a != b).collect::<Vec<_>>(), [true, false, true, false]);
    std::fs::write(f.path("img/amd64/SHA256SUMS"), format!("{SUM_A}  disk.raw\n")).unwrap();
    assert_eq!(keys(&f.plan("").unwrap()), base);

    // An included phase file: every build of every manifest including it.
    let phase = f.path("phases/common.yaml");
    let text = std::fs::read_to_string(&phase).unwrap();
    std::fs::write(&phase, text.replace("/etc/greeting", "/etc/greeting2")).unwrap();
    assert!(keys(&f.plan("").unwrap()).iter().zip(&base).all(|(a, b)| a != b));
    std::fs::write(&phase, &text).unwrap();
    assert_eq!(keys(&f.plan("").unwrap()), base);

    // One manifest: only its builds.
    let one = f.path("one.yaml");
    let text = std::fs::read_to_string(&one).unwrap();
    std::fs::write(&one, text.replace("/etc/motd", "/etc/motd.d/kib")).unwrap();
    let changed = keys(&f.plan("").unwrap());
    assert_eq!(changed.iter().zip(&base).map(|(a, b)| a != b).collect::<Vec<_>>(), [true, true, false, false]);
    std::fs::write(&one, &text).unwrap();

    // A file.source file a step copies: every build.
    std::fs::write(f.path("phases/motd"), "changed\n").unwrap();
    assert!(keys(&f.plan("").unwrap()).iter().zip(&base).all(|(a, b)| a != b));
    std::fs::write(f.path("phases/motd"), "welcome\n").unwrap();
    assert_eq!(keys(&f.plan("").unwrap()), base);

    // The output name is part of the key (the files are named after it).
    let changed = keys(&f.plan("output: {name: \"x-<manifest>-<base>-<arch>\"}\n").unwrap());
    assert!(changed.iter().zip(&base).all(|(a, b)| a != b));
}

#[test]
fn stamps_decide_up_to_date() {
    let f = Fixture::new();
    let p = f.plan("").unwrap();
    let root = f.path("out");
    let b = &p.builds[0];
    assert!(!b.up_to_date(&root));
    let dir = b.output_dir(&root);
    std::fs::create_dir_all(&dir).unwrap();
    for o in &b.outputs {
        std::fs::write(dir.join(o), o.as_bytes()).unwrap();
    }
    Stamp::of(b, &dir).unwrap().write(&dir).unwrap();
    assert!(b.up_to_date(&root));
    assert!(!p.builds[1].up_to_date(&root));
    // Another key (a changed variable): not up to date.
    let p2 = f.plan("variables: {greeting: hi}\n").unwrap();
    assert!(!p2.builds[0].up_to_date(&root));
    // An output gone or of another size: not up to date.
    std::fs::write(dir.join("bom.json"), b"{}").unwrap();
    assert!(!b.up_to_date(&root));
    std::fs::write(dir.join("bom.json"), b"bom.json").unwrap();
    assert!(b.up_to_date(&root));
    std::fs::remove_file(dir.join("one-deb-amd64.raw")).unwrap();
    assert!(!b.up_to_date(&root));
    assert!(Stamp::of(b, &dir).unwrap_err().to_string().contains("one-deb-amd64.raw missing"));
}

#[test]
fn bad_matrices_are_refused_with_file_line_and_field() {
    let f = Fixture::new();
    // Unknown field: file, line, column, field path.
    let e = err(f.plan("exclude:\n  - {arch: arm64, flavour: x}\n"));
    assert!(e.contains("matrix.yaml:10:") && e.contains("exclude[0]") && e.contains("unknown field `flavour`"), "{e}");
    // Unknown format and arch.
    let e = err(f.plan("formats: [qcow3]\n"));
    assert!(e.contains("matrix.yaml:9:") && e.contains("formats[0]") && e.contains("unknown variant `qcow3`"), "{e}");
    let text = f.head().replace("arches: [amd64, arm64]", "arches: [amd64, riscv]");
    std::fs::write(f.path("m2.yaml"), text).unwrap();
    let e = format!("{:#}", Plan::load(&f.path("m2.yaml"), &LoadOptions::new()).unwrap_err());
    assert!(e.contains("m2.yaml:8:") && e.contains("arches[1]") && e.contains("unknown variant `riscv`"), "{e}");
    // A missing manifest.
    let text = f.head().replace("[one.yaml, two.yaml]", "[one.yaml, three.yaml]");
    std::fs::write(f.path("m3.yaml"), text).unwrap();
    let e = format!("{:#}", Plan::load(&f.path("m3.yaml"), &LoadOptions::new()).unwrap_err());
    assert!(e.contains("manifests: three.yaml: no such file"), "{e}");
    // A base without a checksum.
    let text = f.head().replace(&format!(", sha256: {SUM_B}"), "");
    std::fs::write(f.path("m4.yaml"), text).unwrap();
    let e = format!("{:#}", Plan::load(&f.path("m4.yaml"), &LoadOptions::new()).unwrap_err());
    assert!(e.contains("bases.deb.arm64") && e.contains("has no checksum: no SHA256SUMS or sha256sum.txt beside it lists it"), "{e}");
    // A pin that contradicts the list beside the image: both sums.
    let text = f.head().replace("amd64: {path: img/amd64/disk.raw}", &format!("amd64: {{path: img/amd64/disk.raw, sha256: {SUM_B}}}"));
    std::fs::write(f.path("m5.yaml"), text).unwrap();
    let e = format!("{:#}", Plan::load(&f.path("m5.yaml"), &LoadOptions::new()).unwrap_err());
    assert!(e.contains(SUM_A) && e.contains(SUM_B), "{e}");
    // A base lacking an architecture the matrix builds.
    let text = f.head().replace(&format!("    arm64: {{path: img/arm64/disk.raw, sha256: {SUM_B}}}\n"), "");
    std::fs::write(f.path("m6.yaml"), text).unwrap();
    let e = format!("{:#}", Plan::load(&f.path("m6.yaml"), &LoadOptions::new()).unwrap_err());
    assert!(e.contains("base deb has no arm64 image (it has: amd64)") && e.contains("exclude {base: deb, arch: arm64}"), "{e}");
    // A missing image.
    let text = f.head().replace("img/arm64/disk.raw", "img/arm64/gone.raw");
    std::fs::write(f.path("m7.yaml"), text).unwrap();
    let e = format!("{:#}", Plan::load(&f.path("m7.yaml"), &LoadOptions::new()).unwrap_err());
    assert!(e.contains("bases.deb.arm64: image") && e.contains("gone.raw not found"), "{e}");
    // A URL base without a sum and no fetcher; with a sum it passes through.
    let text = f.head().replace("{path: img/arm64/disk.raw, sha256", "{url: \"https://example.org/d/arm64.raw\", sha256");
    std::fs::write(f.path("m8.yaml"), text.clone()).unwrap();
    let p = Plan::load(&f.path("m8.yaml"), &LoadOptions::new()).unwrap();
    assert!(p.builds[1].input.is_url && p.builds[1].input.image == "https://example.org/d/arm64.raw");
    std::fs::write(f.path("m9.yaml"), text.replace(&format!(", sha256: {SUM_B}"), "")).unwrap();
    let e = format!("{:#}", Plan::load(&f.path("m9.yaml"), &LoadOptions::new()).unwrap_err());
    assert!(e.contains("has no sha256, and its checksum list https://example.org/d/SHA256SUMS cannot be fetched here"), "{e}");
    // Wrong kind.
    std::fs::write(f.path("m10.yaml"), f.head().replace("kind: ImageMatrix", "kind: ImageManifest")).unwrap();
    let e = format!("{:#}", Plan::load(&f.path("m10.yaml"), &LoadOptions::new()).unwrap_err());
    assert!(e.contains("m10.yaml:2:") && e.contains("kind") && e.contains("unknown variant `ImageManifest`"), "{e}");
}

#[test]
fn each_build_gets_the_backend_and_the_appliance_limit() {
    let f = Fixture::new();
    let p = f.plan("").unwrap();
    let mut opts = run::RunOptions {
        kib: "/usr/bin/kib".into(),
        jobs: 1,
        force: false,
        cache_dir: "/home/alice/.cache/kib".into(),
        config: None,
        work_dir: "/home/alice/kib-work".into(),
        convert_jobs: 2,
        tail_lines: 15,
        backend: crate::backend::BackendArg::Guestfs,
        appliance_timeout: 900,
    };
    let args = |o: &run::RunOptions| run::customize_command(&p.builds[0], Path::new("/out"), o).get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
    let a = args(&opts);
    assert!(a.contains("--backend guestfs --appliance-timeout 900"), "{a}");
    assert!(a.contains("--cache-dir /home/alice/.cache/kib") && a.contains("--work-dir /home/alice/kib-work"), "{a}");
    opts.backend = crate::backend::BackendArg::Loop;
    let a = args(&opts);
    assert!(a.ends_with("--backend loop"), "{a}");
    opts.backend = crate::backend::BackendArg::Auto;
    assert!(args(&opts).ends_with("--backend auto --appliance-timeout 900"));
}
