//! `kib matrix`: plan, run and render, as root on the base image.
//!
//! - `four_builds_in_parallel_then_idempotent_then_one_variable`: a 4-build matrix (two copies
//!   of the overhead manifest with a variable × two names for the base image) with `-j 2`; run
//!   again: everything up to date in under 2 s; a variable changed for one manifest: exactly its
//!   two builds rebuild.
//! - `a_failing_build_does_not_stop_the_others`: the table names it, its log's tail is shown, the
//!   other build finishes, the exit status is non-zero, nothing is left behind.
//! - `bad_matrices_fail_before_anything_runs`: --index out of range, an exclude value matching
//!   nothing, a base without a checksum, a missing manifest, a typo'd field (file:line).
//! - `rendered_yaml_passes_the_validators`: the Kubernetes YAML against kubernetes-validate's
//!   bundled OpenAPI schemas (strict) and the real kubectl (`apply --dry-run=client` against a
//!   discovery stub), the Argo Workflow against Argo's published JSON schema (vendored in
//!   testdata/schemas, checked strictly) and `kubectl create --dry-run=client`.
//! - `one_index_of_the_job_runs_in_podman`: the rendered Job's pod template, made a Pod (PVCs as
//!   host folders), played with `podman kube play`: it builds its index's image.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The overhead manifest (testdata/bench/overhead.yaml) with a variable its file step writes.
fn overhead_with_variable(dir: &Path, name: &str, extra_step: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {{name: {name}}}\nvariables: {{marker: one}}\nsteps:\n  - name: one file\n    file: {{path: /etc/kib-bench, content: \"${{marker}}\\n\"}}\n  - name: one command in the chroot\n    run: {{script: \"true\"}}\n{extra_step}output: {{formats: [qcow2]}}\n"
        ),
    )
    .unwrap();
    p
}

/// A matrix file in `dir` over the base image, named twice (`deb`, `deb2`), with `rest` appended.
fn write_matrix(dir: &Path, file: &str, manifests: &[&str], two_bases: bool, rest: &str) -> PathBuf {
    let base = base_image();
    let mut text = format!("apiVersion: kib/v1\nkind: ImageMatrix\nmetadata: {{name: test-matrix}}\nbases:\n  deb: {{amd64: {{path: {}}}}}\n", base.display());
    if two_bases {
        text.push_str(&format!("  deb2: {{amd64: {{path: {}}}}}\n", base.display()));
    }
    text.push_str(&format!("manifests: [{}]\narches: [amd64]\nformats: [qcow2]\noutput: {{dir: {}}}\n{rest}", manifests.join(", "), dir.join("out").display()));
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

fn matrix(args: &[&str], matrix: &Path, tmp: &Path) -> Output {
    let started = Instant::now();
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("kib"));
    c.current_dir(repo()).arg("matrix").args(args).arg(matrix);
    if args.first() == Some(&"run") {
        c.arg("--work-dir").arg(tmp.join("work"));
    }
    if args.first() != Some(&"render") {
        c.arg("--cache-dir").arg(tmp.join("cache"));
    }
    let out = c.output().unwrap();
    eprintln!(
        "kib matrix {} ({:.1?}): {}\nstdout:\n{}\nstderr (tail):\n{}",
        args.join(" "),
        started.elapsed(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The name and status columns of each build in the run's table (columns are separated by two
/// or more spaces; "up to date" has single ones).
fn statuses(o: &Output) -> Vec<(String, String)> {
    stdout(o)
        .lines()
        .skip(1)
        .take_while(|l| !l.contains(" builds in "))
        .map(|l| {
            let cols: Vec<&str> = l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
            (cols[0].to_string(), cols[1].to_string())
        })
        .collect()
}

fn record(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("matrix.json")).unwrap()).unwrap()
}

#[test]
fn four_builds_in_parallel_then_idempotent_then_one_variable() {
    if skip_unless_root("four_builds_in_parallel_then_idempotent_then_one_variable") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    overhead_with_variable(t, "a", "");
    overhead_with_variable(t, "b", "");
    let m = write_matrix(t, "matrix.yaml", &["a.yaml", "b.yaml"], true, "");
    let out = t.join("out");
    let names = ["a-deb-amd64", "a-deb2-amd64", "b-deb-amd64", "b-deb2-amd64"];

    let started = Instant::now();
    let o = matrix(&["run", "-j", "2"], &m, t);
    let wall = started.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(statuses(&o), names.iter().map(|n| (n.to_string(), "built".to_string())).collect::<Vec<_>>());
    for n in names {
        let dir = out.join(n);
        for f in [format!("{n}.qcow2"), "bom.json".into(), format!("{n}.spdx.json"), "SHA256SUMS".into(), "matrix-build.json".into()] {
            assert!(dir.join(&f).is_file(), "{} missing", dir.join(&f).display());
        }
        let log = std::fs::read_to_string(out.join("logs").join(format!("{n}.log"))).unwrap();
        assert!(log.contains("done in"), "{n}'s log: {log}");
        let bom: Value = serde_json::from_slice(&std::fs::read(dir.join("bom.json")).unwrap()).unwrap();
        assert_eq!(bom["manifest"]["variables"]["marker"], "one", "{n}");
        assert!(stdout(&o).contains(&dir.join(format!("{n}.qcow2")).display().to_string()));
    }
    let rec = record(&out);
    let builds = rec["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 4);
    let sum: f64 = builds.iter().map(|b| b["seconds"].as_f64().unwrap()).sum();
    assert!(builds.iter().all(|b| b["status"] == "built" && b["peak_rss_bytes"].as_u64().unwrap() > 1 << 20), "{rec:#}");
    // Two at a time: the builds' own wall times add up to well over the matrix's.
    assert!(sum > 1.3 * rec["wall_seconds"].as_f64().unwrap(), "builds {sum:.1}s, matrix {rec:#}");
    eprintln!("FIGURE 4-build overhead matrix -j 2: {wall:.1}s wall (builds {sum:.1}s together)");
    assert_nothing_left(&t.join("work"));

    // Again: nothing to do, fast.
    let started = Instant::now();
    let o = matrix(&["run", "-j", "2"], &m, t);
    let again = started.elapsed();
    assert!(o.status.success());
    assert!(statuses(&o).iter().all(|(_, s)| s == "up to date"), "{}", stdout(&o));
    assert!(stdout(&o).contains("4 builds in") && stdout(&o).contains("0 built, 4 up to date, 0 failed"));
    assert!(again < Duration::from_secs(2), "an idempotent re-run took {again:.1?}");
    eprintln!("FIGURE idempotent re-run: {:.2}s", again.as_secs_f64());
    let plan = matrix(&["plan", "--output", "json"], &m, t);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert!(plan["builds"].as_array().unwrap().iter().all(|b| b["up_to_date"] == true && b["key"].as_str().unwrap().len() == 64));
    let keys: Vec<String> = plan["builds"].as_array().unwrap().iter().map(|b| b["key"].as_str().unwrap().to_string()).collect();

    // One variable changed for manifest b: exactly b's two builds rebuild.
    let m = write_matrix(t, "matrix.yaml", &["a.yaml", "b.yaml"], true, "overrides:\n  - when: {manifest: b}\n    variables: {marker: two}\n");
    let o = matrix(&["plan"], &m, t);
    assert!(o.status.success());
    let text = stdout(&o);
    for (n, state) in [("a-deb-amd64", "up to date"), ("a-deb2-amd64", "up to date"), ("b-deb-amd64", "to build"), ("b-deb2-amd64", "to build")] {
        assert!(text.lines().any(|l| l.contains(n) && l.contains(state)), "{n} should be {state}:\n{text}");
    }
    let o = matrix(&["run", "-j", "2"], &m, t);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        statuses(&o),
        [("a-deb-amd64", "up to date"), ("a-deb2-amd64", "up to date"), ("b-deb-amd64", "built"), ("b-deb2-amd64", "built")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    for (n, marker) in [("a-deb-amd64", "one"), ("b-deb2-amd64", "two")] {
        let bom: Value = serde_json::from_slice(&std::fs::read(out.join(n).join("bom.json")).unwrap()).unwrap();
        assert_eq!(bom["manifest"]["variables"]["marker"], marker, "{n}");
    }
    let plan = matrix(&["plan", "--output", "json"], &m, t);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let new_keys: Vec<String> = plan["builds"].as_array().unwrap().iter().map(|b| b["key"].as_str().unwrap().to_string()).collect();
    assert_eq!(new_keys.iter().zip(&keys).map(|(a, b)| a != b).collect::<Vec<_>>(), [false, false, true, true]);
    assert_nothing_left(&t.join("work"));
}

#[test]
fn a_failing_build_does_not_stop_the_others() {
    if skip_unless_root("a_failing_build_does_not_stop_the_others") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    overhead_with_variable(t, "a", "");
    overhead_with_variable(t, "bad", "  - name: breaks\n    run: {script: \"echo boom-in-the-chroot; exit 3\"}\n");
    let m = write_matrix(t, "matrix.yaml", &["bad.yaml", "a.yaml"], false, "");
    let out = t.join("out");
    let o = matrix(&["run", "-j", "2"], &m, t);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(statuses(&o), [("bad-deb-amd64".to_string(), "FAILED".to_string()), ("a-deb-amd64".to_string(), "built".to_string())]);
    let err = stderr(&o);
    assert!(err.contains("build bad-deb-amd64 FAILED: kib customize exit status: 1"), "{err}");
    assert!(err.contains(&out.join("logs/bad-deb-amd64.log").display().to_string()), "{err}");
    // The log's tail: kib's error naming the step, with the chroot's output.
    assert!(err.lines().any(|l| l.starts_with("  | ") && l.contains("breaks")), "{err}");
    assert!(err.contains("boom-in-the-chroot"), "{err}");
    assert!(stdout(&o).contains("2 builds in") && stdout(&o).contains("1 built, 0 up to date, 1 failed"));
    assert!(out.join("a-deb-amd64/a-deb-amd64.qcow2").is_file());
    assert!(!out.join("bad-deb-amd64/matrix-build.json").exists());
    assert!(!out.join("bad-deb-amd64/bad-deb-amd64.qcow2").exists());
    let rec = record(&out);
    assert_eq!(rec["builds"][0]["status"], "failed");
    assert!(rec["builds"][0]["log_tail"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("boom-in-the-chroot")));
    assert_eq!(rec["builds"][1]["status"], "built");
    assert_nothing_left(&t.join("work"));
}

#[test]
fn bad_matrices_fail_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    overhead_with_variable(t, "a", "");
    let m = write_matrix(t, "matrix.yaml", &["a.yaml"], true, "");
    let o = matrix(&["run", "--index", "2"], &m, t);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--index 2 is out of range: ") && stderr(&o).contains("has 2 builds (indexes 0 to 1)"), "{}", stderr(&o));
    let cases: [(&str, &[&str], &str, &str); 4] = [
        ("exclude.yaml", &["a.yaml"], "exclude:\n  - {arch: arm64}\n", "exclude entry 1: matches nothing: arch: arm64 (the archs are: amd64)"),
        ("missing.yaml", &["a.yaml", "nope.yaml"], "", "manifests: nope.yaml: no such file"),
        ("typo.yaml", &["a.yaml"], "exclued: []\n", "typo.yaml:11:1: exclued: unknown field `exclued`"),
        ("var.yaml", &["a.yaml"], "variables: {nope: x}\n", "--set nope: the manifest has no variable `nope`; it has: marker"),
    ];
    for (file, manifests, rest, want) in cases {
        let m = write_matrix(t, file, manifests, true, rest);
        for cmd in [&["plan"][..], &["run", "-j", "2"][..]] {
            let o = matrix(cmd, &m, t);
            assert_eq!(o.status.code(), Some(1), "{file}");
            assert!(stderr(&o).contains(want), "{file}: want `{want}` in:\n{}", stderr(&o));
        }
    }
    // A base without a checksum: an image with no SHA256SUMS beside it.
    std::fs::write(t.join("plain.raw"), b"x").unwrap();
    let text = std::fs::read_to_string(t.join("matrix.yaml")).unwrap().replace(&base_image().display().to_string(), &t.join("plain.raw").display().to_string());
    std::fs::write(t.join("nosum.yaml"), text).unwrap();
    let o = matrix(&["plan"], &t.join("nosum.yaml"), t);
    assert!(stderr(&o).contains("bases.deb.amd64") && stderr(&o).contains("plain.raw has no checksum"), "{}", stderr(&o));
    // Nothing ran: no output root, no work directory.
    assert!(!t.join("out").exists() && !t.join("work").exists());
}

/// The validators of scripts/k8s-validators.sh (cached), or None when it cannot make them.
fn validators() -> PathBuf {
    let o = Command::new("bash").arg(repo().join("scripts/k8s-validators.sh")).output().unwrap();
    assert!(o.status.success(), "k8s-validators.sh: {}", String::from_utf8_lossy(&o.stderr));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).lines().last().unwrap().trim())
}

/// The discovery stub (testdata/k8s/discovery-stub.py) on a free port, killed on drop, with a
/// kubeconfig pointing at it.
struct Stub {
    child: std::process::Child,
    kubeconfig: PathBuf,
}

impl Stub {
    fn start(dir: &Path) -> Stub {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(repo().join("testdata/k8s/discovery-stub.py"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!("apiVersion: v1\nkind: Config\nclusters: [{{name: stub, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\ncontexts: [{{name: stub, context: {{cluster: stub, namespace: default}}}}]\ncurrent-context: stub\n"),
        )
        .unwrap();
        Stub { child, kubeconfig }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The YAML documents of `text` as JSON values.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n").filter(|d| d.lines().any(|l| !l.starts_with('#') && !l.trim().is_empty() && l != "---")).map(|d| yaml_serde::from_str(d).unwrap()).collect()
}

/// `schema` with `additionalProperties: false` on every object definition that lists its
/// properties and says nothing about others: Argo's published schema leaves them open, and a
/// typo'd field must fail.
fn strict(mut schema: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("properties") && !m.contains_key("additionalProperties") && m.get("type").is_none_or(|t| t == "object") {
                    m.insert("additionalProperties".into(), Value::Bool(false));
                }
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut schema);
    schema
}

fn argo_errors(doc: &Value) -> Vec<String> {
    let path = repo().join("testdata/schemas/argo-workflows-v4.1.2.schema.json");
    let full: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let schema = strict(serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow",
        "definitions": full["definitions"],
    }));
    let v = jsonschema::options().build(&schema).unwrap();
    v.iter_errors(doc).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

fn render(m: &Path, target: &str, extra: &[&str], t: &Path) -> String {
    let image: &[&str] = if extra.contains(&"--image") { &[] } else { &["--image", "localhost/kib:latest"] };
    let o = matrix(&["render", "--target", target, "-j", "2"].iter().chain(image).chain(extra).copied().collect::<Vec<_>>(), m, t);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

#[test]
fn rendered_yaml_passes_the_validators() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    if !base_image().starts_with("/var/cache/kib/") {
        eprintln!("SKIPPED rendered_yaml_passes_the_validators: the base image must lie under /var/cache/kib (the cache volume)");
        return;
    }
    let v = validators();
    std::fs::create_dir_all(t.join("phases")).unwrap();
    std::fs::write(t.join("phases/extra.yaml"), "apiVersion: kib/v1\nkind: Phase\nsteps:\n  - name: x\n    file: {path: /etc/x, content: x}\n").unwrap();
    overhead_with_variable(t, "a", "");
    std::fs::write(t.join("b.yaml"), std::fs::read_to_string(t.join("a.yaml")).unwrap().replace("name: a}", "name: b}\ninclude: [phases/extra.yaml]")).unwrap();
    // Two arches: the arm64 one pinned by URL (passed through to customize).
    let m = write_matrix(
        t,
        "matrix.yaml",
        &["a.yaml", "b.yaml"],
        false,
        "",
    );
    let text = std::fs::read_to_string(&m).unwrap().replace(
        "arches: [amd64]",
        "arches: [amd64, arm64]",
    ).replace(
        "  deb: {amd64: {path:",
        &format!("  deb: {{arm64: {{url: \"https://example.org/debian-12-arm64.raw\", sha256: {}}}, amd64: {{path:", "c".repeat(64)),
    );
    std::fs::write(&m, text).unwrap();

    let stub = Stub::start(t);
    for target in ["kubernetes", "argo"] {
        for extra in [&[][..], &["--emulate-foreign"][..]] {
            let yaml = render(&m, target, extra, t);
            let docs = documents(&yaml);
            let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
            let file = t.join(format!("{target}{}.yaml", extra.len()));
            std::fs::write(&file, &yaml).unwrap();
            // The Kubernetes objects against the 1.30 and 1.37 OpenAPI schemas, strictly.
            let k8s: Vec<&Value> = docs.iter().filter(|d| d["kind"] != "Workflow").collect();
            let k8s_file = t.join(format!("{target}{}-k8s.json", extra.len()));
            std::fs::write(&k8s_file, k8s.iter().map(|d| serde_json::to_string(d).unwrap()).collect::<Vec<_>>().join("\n---\n")).unwrap();
            for version in ["1.30.0", "1.37.0"] {
                let o = Command::new(v.join("bin/kubernetes-validate")).args(["--strict", "-k", version]).arg(&k8s_file).output().unwrap();
                let report = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                for (i, d) in docs.iter().enumerate() {
                    if d["kind"] == "Workflow" {
                        continue;
                    }
                    assert!(
                        report.contains(&format!("passed for resource {}/{}", d["kind"].as_str().unwrap().to_lowercase(), d["metadata"]["name"].as_str().unwrap())),
                        "{target} {extra:?} document {i} ({}) not validated against {version}:\n{report}",
                        d["kind"]
                    );
                }
                assert!(!report.contains("ERROR"), "{report}");
            }
            match target {
                "kubernetes" => {
                    let jobs: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Job").collect();
                    assert_eq!(kinds[0], "ConfigMap");
                    assert_eq!(jobs.len(), if extra.is_empty() { 2 } else { 1 }, "{yaml}");
                    for j in &jobs {
                        let s = &j["spec"];
                        assert_eq!(s["completionMode"], "Indexed");
                        assert_eq!(s["completions"], if extra.is_empty() { 2 } else { 4 });
                        assert_eq!(s["parallelism"], 2);
                        assert_eq!(s["backoffLimitPerIndex"], 1);
                        assert!(s["ttlSecondsAfterFinished"].as_u64().unwrap() > 0);
                        let pod = &s["template"]["spec"];
                        let c = &pod["containers"][0];
                        assert_eq!(c["securityContext"]["privileged"], true);
                        // The index comes from JOB_COMPLETION_INDEX, declared from the annotation.
                        assert!(!c["command"].as_array().unwrap().iter().any(|a| a == "--index"));
                        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.annotations['batch.kubernetes.io/job-completion-index']");
                        assert!(pod["volumes"].as_array().unwrap().iter().any(|v| v["hostPath"]["path"] == "/dev"));
                        assert!(pod["volumes"].as_array().unwrap().iter().any(|v| v["persistentVolumeClaim"]["claimName"] == "kib-cache"));
                        let arch = pod["nodeSelector"]["kubernetes.io/arch"].as_str().unwrap();
                        assert!(extra.is_empty() || arch == "amd64");
                        assert!(c["resources"]["requests"]["memory"].as_str().unwrap().ends_with("i"));
                    }
                    let o = Command::new(v.join("bin/kubectl")).arg("--kubeconfig").arg(&stub.kubeconfig).args(["apply", "--dry-run=client", "--validate=false", "-f"]).arg(&file).output().unwrap();
                    let said = String::from_utf8_lossy(&o.stdout);
                    assert!(o.status.success(), "kubectl apply: {}{said}", String::from_utf8_lossy(&o.stderr));
                    assert!(said.contains("configmap/test-matrix-matrix created (dry run)") && said.matches("job.batch/").count() == jobs.len(), "{said}");
                }
                _ => {
                    assert_eq!(kinds, ["ConfigMap", "Workflow"]);
                    let wf = &docs[1];
                    let errors = argo_errors(wf);
                    assert!(errors.is_empty(), "the Workflow fails Argo's schema:\n{}\n{yaml}", errors.join("\n"));
                    assert_eq!(wf["spec"]["parallelism"], 2);
                    let steps = wf["spec"]["templates"][0]["steps"][0].as_array().unwrap();
                    assert_eq!(steps.len(), 4);
                    for tpl in &wf["spec"]["templates"].as_array().unwrap()[1..] {
                        assert_eq!(tpl["retryStrategy"]["limit"], "1");
                    }
                    // A typo'd field fails the strict schema (the check can fail).
                    let mut bad = wf.clone();
                    bad["spec"]["parallelsm"] = Value::from(2);
                    assert!(!argo_errors(&bad).is_empty());
                    let o = Command::new(v.join("bin/kubectl")).arg("--kubeconfig").arg(&stub.kubeconfig).args(["create", "--dry-run=client", "--validate=false", "-f"]).arg(&file).output().unwrap();
                    let said = String::from_utf8_lossy(&o.stdout);
                    assert!(o.status.success(), "kubectl create: {}{said}", String::from_utf8_lossy(&o.stderr));
                    assert!(said.contains("workflow.argoproj.io/") && said.contains("created (dry run)"), "{said}");
                }
            }
        }
    }
    // kubernetes-validate can fail: a misspelled field in the Job.
    let yaml = render(&m, "kubernetes", &[], t).replace("completionMode:", "completionMod:");
    std::fs::write(t.join("bad.yaml"), yaml).unwrap();
    let o = Command::new(v.join("bin/kubernetes-validate")).args(["--strict", "-k", "1.30.0"]).arg(t.join("bad.yaml")).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stdout).contains("completionMod"), "{}", String::from_utf8_lossy(&o.stdout));
    // A base image outside the cache volume is refused.
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::copy(base_image().parent().unwrap().join("SHA256SUMS"), t.join("SHA256SUMS")).unwrap();
    let local = t.join(base_image().file_name().unwrap());
    std::fs::write(&local, b"").unwrap();
    std::fs::write(t.join("local.yaml"), text.replace(&base_image().display().to_string(), &local.display().to_string())).unwrap();
    let o = matrix(&["render", "--target", "kubernetes"], &t.join("local.yaml"), t);
    assert!(!o.status.success() && stderr(&o).contains("would not exist in the pods"), "{}", stderr(&o));
}

/// podman with the project's containers.conf unless CONTAINERS_CONF says otherwise.
fn podman() -> Command {
    let mut c = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        c.env("CONTAINERS_CONF", repo().join("scripts/containers.conf"));
    }
    c
}

/// A pod removed (forcibly) on drop, so that a failing test leaves none.
struct PodGuard(String);

impl Drop for PodGuard {
    fn drop(&mut self) {
        let _ = podman().args(["pod", "rm", "--force", "--ignore", &self.0]).output();
    }
}

#[test]
fn one_index_of_the_job_runs_in_podman() {
    if skip_unless_root("one_index_of_the_job_runs_in_podman") {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        eprintln!("SKIPPED one_index_of_the_job_runs_in_podman: podman is not installed (scripts/deps.sh installs it)");
        return;
    }
    if !base_image().starts_with("/var/cache/kib/") {
        eprintln!("SKIPPED one_index_of_the_job_runs_in_podman: the base image must lie under /var/cache/kib (the cache volume)");
        return;
    }
    // The kib container image with the kib under test (cached by content hash).
    let started = Instant::now();
    let o = Command::new("bash").arg(repo().join("scripts/make-container-image.sh")).arg("--kib").arg(assert_cmd::cargo::cargo_bin("kib")).output().unwrap();
    assert!(o.status.success(), "make-container-image.sh: {}", String::from_utf8_lossy(&o.stderr));
    let image = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().to_string();
    eprintln!("container image {image} in {:.1?}", started.elapsed());

    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    overhead_with_variable(t, "a", "");
    let m = write_matrix(t, "matrix.yaml", &["a.yaml"], true, "");
    let yaml = render(&m, "kubernetes", &["--image", &image], t);
    let docs = documents(&yaml);
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap().clone();
    let job = docs.iter().find(|d| d["kind"] == "Job").unwrap();

    // The Job's pod template as a Pod for index 1, the PVCs as host folders: the cache is the
    // host's /var/cache/kib (where the base image is), the outputs a folder of this test.
    let out = t.join("out-pod");
    std::fs::create_dir_all(&out).unwrap();
    let name = format!("kib-matrix-test-{}", std::process::id());
    let mut spec = job["spec"]["template"]["spec"].clone();
    for v in spec["volumes"].as_array_mut().unwrap() {
        let host = match v["persistentVolumeClaim"]["claimName"].as_str() {
            Some("kib-cache") => "/var/cache/kib".to_string(),
            Some("kib-output") => out.display().to_string(),
            _ => continue,
        };
        let vname = v["name"].clone();
        *v = serde_json::json!({"name": vname, "hostPath": {"path": host, "type": "Directory"}});
    }
    let c = &mut spec["containers"][0];
    assert_eq!(c["env"][0]["name"], "JOB_COMPLETION_INDEX");
    // The Job controller sets this annotation; a bare Pod gets the value itself.
    c["env"][0] = serde_json::json!({"name": "JOB_COMPLETION_INDEX", "value": "1"});
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
    let file = t.join("pod.yaml");
    // The ConfigMap as kib rendered it, byte for byte: parsing a document cut out by "\n---\n"
    // loses its last block scalar's final newline, which changes the manifest's hash and so the
    // build key.
    let cm_text = yaml.split("\n---\n").find(|d| d.contains("\nkind: ConfigMap\n")).unwrap();
    assert_eq!(yaml_serde::from_str::<Value>(cm_text).unwrap()["metadata"], cm["metadata"]);
    std::fs::write(&file, format!("{cm_text}\n---\n{}", yaml_serde::to_string(&pod).unwrap())).unwrap();
    eprintln!("{}", std::fs::read_to_string(&file).unwrap().lines().filter(|l| !l.starts_with("  f")).collect::<Vec<_>>().join("\n"));

    let _guard = PodGuard(name.clone());
    let started = Instant::now();
    let o = podman().args(["kube", "play"]).arg(&file).output().unwrap();
    assert!(o.status.success(), "podman kube play: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let ctr = format!("{name}-kib");
    let o = podman().args(["wait", &ctr]).output().unwrap();
    let code = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let logs = podman().args(["logs", &ctr]).output().unwrap();
    let logs = format!("{}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
    eprintln!("pod {name}: exit {code} after {:.1?}; its log:\n{logs}", started.elapsed());
    assert_eq!(code, "0", "the pod failed:\n{logs}");
    // Index 1 of the amd64 Job is the plan's second build.
    let built = out.join("a-deb2-amd64");
    for f in ["a-deb2-amd64.qcow2", "bom.json", "SHA256SUMS", "matrix-build.json"] {
        assert!(built.join(f).is_file(), "{} missing; {:?}", built.join(f).display(), std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect::<Vec<_>>());
    }
    assert!(!out.join("a-deb-amd64").exists(), "only index 1 may be built");
    assert!(logs.contains("a-deb2-amd64") && logs.contains("1 built"), "{logs}");
    let o = Command::new("qemu-img").args(["check"]).arg(built.join("a-deb2-amd64.qcow2")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // The plan run on the host agrees: that build is up to date with the pod's outputs.
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("kib"));
    let o = c.args(["matrix", "plan", "--output", "json", "--output-dir"]).arg(&out).arg(&m).output().unwrap();
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let stamp = std::fs::read_to_string(built.join("matrix-build.json")).unwrap_or_default();
    assert_eq!(plan["builds"][1]["up_to_date"], true, "the pod's stamp:\n{stamp}\nthe host's plan:\n{plan:#}");
    assert_eq!(plan["builds"][0]["up_to_date"], false);
}
