//! The terminal experience and what programs parse: `customize --output json` streams JSON-lines
//! events that end with the outputs and their sums; piped output has no escape codes; `kib
//! schema` accepts every shipped manifest and phase file and rejects typos; completions, the man
//! page, and `--output` refusing what it does not know.

mod common;
#[path = "common/sbom_schema.rs"]
#[allow(dead_code)]
mod sbom_schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;

/// The smallest build: one file step, one step whose `when` does not match, qcow2.
const MANIFEST: &str = r#"apiVersion: kib/v1
kind: ImageManifest
metadata: {name: events}
steps:
  - name: a file
    file: {path: /etc/kib-events, content: "events\n"}
  - name: only on arm64
    when: {arch: [arm64]}
    file: {path: /etc/kib-arm64, content: "no\n"}
output: {formats: [qcow2]}
"#;

fn no_escape_codes(what: &str, text: &str) {
    assert!(!text.contains('\x1b'), "{what} has escape codes:\n{text:?}");
    assert!(!text.contains('\r'), "{what} redraws lines with \\r:\n{text:?}");
}

#[test]
fn json_lines_events_parse_in_order_and_end_with_outputs_and_sums() {
    if skip_unless_root("json_lines_events_parse_in_order_and_end_with_outputs_and_sums") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let manifest = t.join("events.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let out = t.join("out");
    let run = customize_cmd_to(&base_image(), &manifest, t, &out).args(["--output", "json"]).output().unwrap();
    let stdout = String::from_utf8(run.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}\n{stdout}");
    no_escape_codes("stdout", &stdout);
    no_escape_codes("stderr", &stderr);

    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(events.len() > 10, "{stdout}");
    // Every event has its tag and a time that never goes back; a start comes before its
    // progress and end, and every start ends exactly once.
    let mut open: HashMap<u64, String> = HashMap::new();
    let mut ended = Vec::new();
    let mut last_t = 0.0;
    for e in &events[..events.len() - 1] {
        let t = e["t"].as_f64().expect("t");
        assert!(t >= last_t, "time went back at {e}");
        last_t = t;
        let id = e["id"].as_u64();
        match e["event"].as_str().expect("event tag") {
            "start" => assert!(open.insert(id.unwrap(), e["label"].as_str().unwrap().to_string()).is_none(), "{e}"),
            "progress" => assert!(open.contains_key(&id.unwrap()), "progress before start: {e}"),
            "end" => {
                assert_eq!(open.remove(&id.unwrap()).as_deref(), e["label"].as_str(), "{e}");
                ended.push(e.clone());
            }
            "warning" => assert!(e["message"].is_string(), "{e}"),
            other => panic!("unknown event {other}: {e}"),
        }
    }
    assert!(open.is_empty(), "never ended: {open:?}");
    let of = |kind: &str| ended.iter().filter(|e| e["kind"] == kind).map(|e| (e["label"].as_str().unwrap().to_string(), e["status"].as_str().unwrap().to_string())).collect::<Vec<_>>();
    let phases = of("phase");
    assert_eq!(phases.len(), 3, "{phases:?}");
    for (i, (label, status)) in phases.iter().enumerate() {
        assert!(label.starts_with(&format!("Phase {i}")), "{phases:?}");
        assert_eq!(status, "ok");
    }
    let steps = of("step");
    assert!(steps.contains(&("step 1/2 a file (file)".to_string(), "ok".to_string())), "{steps:?}");
    assert!(steps.iter().any(|(l, s)| l.starts_with("step 2/2 only on arm64") && s == "skipped"), "{steps:?}");
    let tasks = of("task");
    assert!(tasks.iter().any(|(l, s)| l.starts_with("working copy of") && s == "ok"), "{tasks:?}");
    assert!(tasks.iter().any(|(l, s)| l == "converting to qcow2" && s == "ok"), "{tasks:?}");
    // Phase 1's step ends inside Phase 1: after Phase 0 ends and before Phase 1 does.
    let pos = |label: &str| ended.iter().position(|e| e["label"].as_str().unwrap().starts_with(label)).unwrap();
    assert!(pos("Phase 0") < pos("step 1/2") && pos("step 1/2") < pos("Phase 1") && pos("Phase 1") < pos("converting to qcow2"));

    // The last event: the result, with every output, its size and its sum.
    let result = events.last().unwrap();
    assert_eq!(result["event"], "result", "{result}");
    assert_eq!(result["status"], "ok");
    let outputs = result["outputs"].as_array().unwrap();
    let names: Vec<String> = outputs.iter().map(|o| Path::new(o["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["events.qcow2", "bom.json", "events.spdx.json", "events.cdx.json", "SHA256SUMS"]);
    for o in outputs {
        let p = PathBuf::from(o["path"].as_str().unwrap());
        assert!(p.starts_with(&out), "{o}");
        assert_eq!(o["sha256"].as_str().unwrap(), sha256(&p), "{o}");
        assert_eq!(o["bytes"].as_u64().unwrap(), std::fs::metadata(&p).unwrap().len(), "{o}");
    }
    // The SBOMs of this small build pass the SPDX and CycloneDX projects' own tools.
    sbom_schema::assert_reference_tool_accepts(&out.join("events.spdx.json"), sbom_schema::SbomKind::Spdx23);
    sbom_schema::assert_reference_tool_accepts(&out.join("events.cdx.json"), sbom_schema::SbomKind::CycloneDx15);
    assert_nothing_left(&t.join("work"));
}

#[test]
fn piped_text_output_has_no_escape_codes_and_ends_with_a_summary() {
    if skip_unless_root("piped_text_output_has_no_escape_codes_and_ends_with_a_summary") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let manifest = t.join("events.yaml");
    std::fs::write(&manifest, MANIFEST.replace("[qcow2]", "[raw]")).unwrap();
    let out = t.join("out");
    // Standard output and error are pipes here; TERM claims a terminal that could show colour.
    let run = customize_cmd_to(&base_image(), &manifest, t, &out).env("TERM", "xterm-256color").env_remove("NO_COLOR").output().unwrap();
    let stdout = String::from_utf8(run.stdout).unwrap();
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert!(run.status.success(), "{stderr}");
    no_escape_codes("stdout", &stdout);
    no_escape_codes("stderr", &stderr);
    // Plain lines: each phase and step starts and ends, no timestamps without -v.
    for line in ["Phase 0: verify, working copy, mount", "  step 1/2 a file (file): done in", "Phase 2: sysprep, BOM, conversion: done in"] {
        assert!(stderr.contains(line), "no `{line}` in:\n{stderr}");
    }
    assert!(stderr.contains("step 2/2 only on arm64 (file, `when` does not match): skipped"), "{stderr}");
    assert!(!stderr.lines().any(|l| l.starts_with("20") && l.contains('T') && l.contains('Z')), "timestamps without -v:\n{stderr}");
    // The summary, on standard output: phases, slowest steps, outputs with sizes.
    for word in ["PHASE", "SLOWEST STEPS", "OUTPUT", "events.raw", "SHA256SUMS", "TOTAL"] {
        assert!(stdout.contains(word), "no `{word}` in the summary:\n{stdout}");
    }
    assert_nothing_left(&t.join("work"));
}

/// Every `.yaml` under `dir`, recursively.
fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, found);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            found.push(p);
        }
    }
}

fn schema_validator() -> jsonschema::Validator {
    let out = kib().arg("schema").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kib schema prints JSON");
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    jsonschema::options().should_validate_formats(true).build(&schema).expect("kib schema is a valid JSON Schema")
}

fn yaml_as_json(text: &str) -> serde_json::Value {
    yaml_serde::from_str(text).unwrap()
}

#[test]
fn schema_accepts_every_shipped_manifest_and_phase_file() {
    let v = schema_validator();
    let mut files = Vec::new();
    yaml_files(&repo().join("manifests"), &mut files);
    yaml_files(&repo().join("phases"), &mut files);
    assert!(files.iter().any(|f| f.starts_with(repo().join("phases/providers"))), "no provider phases found: {files:?}");
    assert!(files.len() >= 10, "{files:?}");
    for f in &files {
        let doc = yaml_as_json(&std::fs::read_to_string(f).unwrap());
        // An image matrix (manifests/matrix-example.yaml) is its own kind, checked by `kib matrix plan`.
        if doc["kind"] == "ImageMatrix" {
            continue;
        }
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{} violates `kib schema`:\n{}", f.display(), errors.join("\n"));
    }
}

#[test]
fn schema_rejects_typos_wrong_types_and_unknown_formats() {
    let v = schema_validator();
    let good = yaml_as_json(MANIFEST);
    assert!(v.is_valid(&good));
    for (bad, why) in [
        (MANIFEST.replace("file: {path", "fiel: {path"), "/steps/0"),
        // `output` is optional: the schema's anyOf [Output, null] fails as a whole, at /output.
        (MANIFEST.replace("[qcow2]", "[qcow3]"), "/output"),
        (MANIFEST.replace("kind: ImageManifest", "kind: Image"), "/kind"),
        (MANIFEST.replace("metadata: {name: events}", "metadata: {name: events, labels: x}"), "/metadata"),
    ] {
        let doc = yaml_as_json(&bad);
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.instance_path().to_string()).collect();
        assert!(errors.iter().any(|p| p == why), "expected an error at {why}, got {errors:?} for:\n{bad}");
    }
}

#[test]
fn completions_man_page_and_output_formats() {
    let bash = kib().args(["completions", "bash"]).output().unwrap();
    assert!(bash.status.success());
    let bash = String::from_utf8(bash.stdout).unwrap();
    assert!(bash.contains("complete -F _kib") && bash.contains("customize") && bash.contains("--disk-image"), "{bash}");
    for shell in ["zsh", "fish"] {
        let s = kib().args(["completions", shell]).output().unwrap();
        assert!(s.status.success() && String::from_utf8_lossy(&s.stdout).contains("disk-image"), "{shell}");
    }
    let man = kib().arg("man").output().unwrap();
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(man.starts_with(".ie") || man.starts_with(".TH"), "{}", &man[..man.len().min(200)]);
    assert!(man.contains(".TH kib 1") && man.contains("KIB CUSTOMIZE") && man.contains("disk\\-image"), "{man}");

    // yaml is no output format: refused by the parser, not printed as text.
    let yaml = kib().args(["validate", "--manifest", "manifests/k8s-node-debian.yaml", "--output", "yaml"]).output().unwrap();
    assert_eq!(yaml.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&yaml.stderr).contains("invalid value 'yaml' for '--output <OUTPUT>'"));
    assert!(yaml.stdout.is_empty());
    // --output json on a listing prints one JSON document.
    let json = kib().args(["--output", "json", "validate", "--manifest", "manifests/k8s-node-debian.yaml"]).output().unwrap();
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("validate --output json is JSON");
    assert!(v["steps"].as_array().is_some_and(|s| !s.is_empty()) && v["steps"][0]["kind"].is_string(), "{v}");
    let ops: serde_json::Value = serde_json::from_slice(&kib().args(["sysprep-operations", "--output", "json"]).output().unwrap().stdout).unwrap();
    assert!(ops.as_array().is_some_and(|o| o.iter().any(|op| op["name"] == "machine-id")), "{ops}");
    let refused = kib().args(["completions", "bash", "--output", "json"]).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--output json does not apply"));
}
