//! `kib matrix render`: the YAML that runs a plan on Kubernetes or Argo, generated from typed
//! structs (serde), never from text templates.
//!
//! Both targets get one ConfigMap holding the matrix file and every file its builds read (the
//! manifests, their includes, `file.source` files), with their folder layout, mounted read-only
//! at [`SRC_DIR`]; the pods' working folder is that mount, so relative paths and release
//! channels resolve as they do on the host. Each pod runs the kib container image, privileged
//! (loop devices, mounts), with the host's /dev (a container's /dev is a copy made at start and
//! lacks loop nodes added later), kib's cache on a PersistentVolumeClaim at /var/cache/kib (base
//! images given by `path` must lie there) and the outputs on another at /out.
//!
//! - **kubernetes**: an Indexed Job per architecture (a Job's pods share one nodeSelector; with
//!   `--emulate-foreign` one Job for all, on amd64 nodes): `completionMode: Indexed`, one
//!   completion per build, `parallelism`, `backoffLimitPerIndex`, `ttlSecondsAfterFinished`; its
//!   pod runs `kib matrix run FILE --arch ARCH`, which takes its index from
//!   `JOB_COMPLETION_INDEX` (declared from the pod's completion-index annotation).
//! - **argo**: a Workflow whose one steps template runs every build as a parallel step (limited
//!   by `parallelism`), each with a `retryStrategy`, through one container template per arch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::Serialize;

use super::run::MatrixRecord;
use super::{Arch, Plan};
use crate::cli::RenderTarget;

/// Where the ConfigMap is mounted in the pods, and their working folder.
pub const SRC_DIR: &str = "/kib/src";
/// kib's cache in the pods (the cache PVC).
pub const CACHE_DIR: &str = "/var/cache/kib";
/// The output root in the pods (the output PVC).
pub const OUT_DIR: &str = "/out";
/// A ConfigMap's data may not exceed 1 MiB.
const CONFIGMAP_LIMIT: usize = 1 << 20;

/// What to render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub target: RenderTarget,
    pub image: String,
    pub jobs: u32,
    pub cache_pvc: String,
    pub output_pvc: String,
    pub emulate_foreign: bool,
    pub retries: u32,
    /// Earlier local runs, to size the resource requests.
    pub measured: Option<MatrixRecord>,
}

// ---- Kubernetes types (the fields kib uses, named as the API names them) ----

#[derive(Debug, Serialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: JobSpec,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub completion_mode: &'static str,
    pub completions: usize,
    pub parallelism: u32,
    pub backoff_limit_per_index: u32,
    pub ttl_seconds_after_finished: u32,
    pub template: PodTemplateSpec,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub restart_policy: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub working_dir: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    pub security_context: SecurityContext,
    pub resources: Resources,
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    pub field_ref: FieldRef,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    pub field_path: String,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub privileged: bool,
}

#[derive(Debug, Serialize, Clone)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolume>,
}

#[derive(Debug, Serialize, Clone)]
pub struct ConfigMapVolume {
    pub name: String,
    pub items: Vec<KeyToPath>,
}

#[derive(Debug, Serialize, Clone)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PvcVolume {
    pub claim_name: String,
}

#[derive(Debug, Serialize, Clone)]
pub struct HostPathVolume {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirVolume {
    pub size_limit: String,
}

// ---- Argo types ----

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: WorkflowSpec,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    pub entrypoint: String,
    pub parallelism: u32,
    pub ttl_strategy: TtlStrategy,
    pub volumes: Vec<Volume>,
    pub templates: Vec<Template>,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct TtlStrategy {
    pub seconds_after_completion: u32,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Inputs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Vec<WorkflowStep>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<RetryStrategy>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

#[derive(Debug, Serialize, Clone)]
pub struct Inputs {
    pub parameters: Vec<Parameter>,
}

#[derive(Debug, Serialize, Clone)]
pub struct Parameter {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Serialize, Clone)]
pub struct WorkflowStep {
    pub name: String,
    pub template: String,
    pub arguments: Inputs,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct RetryStrategy {
    pub limit: String,
    pub retry_policy: String,
}

/// A DNS-1123 name: lowercase letters, digits and `-`, at most `max` characters, starting and
/// ending with a letter or digit.
pub fn dns_name(s: &str, max: usize) -> String {
    let mut out: String = s.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    out.truncate(max);
    let out = out.trim_matches('-').to_string();
    if out.is_empty() { "kib".into() } else { out }
}

fn mib_string(bytes: u64) -> String {
    format!("{}Mi", bytes.div_ceil(1 << 20))
}

/// The pods' resource requests: memory from the largest measured build (peak resident set of its
/// process tree, plus a quarter, at least 512 MiB; 2 GiB when nothing was measured), one CPU,
/// and ephemeral storage for the working copy (the largest base image's size plus 1 GiB).
fn resources(plan: &Plan, measured: Option<&MatrixRecord>) -> (Resources, String) {
    let peaks: Vec<u64> = measured.map(|m| m.builds.iter().map(|b| b.peak_rss_bytes).filter(|b| *b > 0).collect()).unwrap_or_default();
    let (memory, why) = match peaks.iter().max() {
        Some(peak) => {
            let want = (peak + peak / 4).max(512 << 20);
            (mib_string(want.div_ceil(64 << 20) * (64 << 20)), format!("memory: measured peak {} of {} builds (matrix.json) + 25%", mib_string(*peak), peaks.len()))
        }
        None => ("2Gi".to_string(), "memory: default (no measured builds: run `kib matrix run` first, or pass --measured DIR)".to_string()),
    };
    let largest = plan.builds.iter().filter(|b| !b.input.is_url).filter_map(|b| std::fs::metadata(&b.input.image).ok()).map(|m| m.len()).max();
    let storage = match largest {
        Some(l) => format!("{}Gi", (l + (1 << 30)).div_ceil(1 << 30)),
        None => "20Gi".to_string(),
    };
    let requests = BTreeMap::from([("cpu".to_string(), "1".to_string()), ("memory".to_string(), memory), ("ephemeral-storage".to_string(), storage.clone())]);
    (Resources { requests }, format!("{why}; ephemeral-storage: the largest base image + 1Gi ({storage}); cpu: 1"))
}

/// The deepest folder holding every one of `paths`.
fn common_root(paths: &[PathBuf]) -> PathBuf {
    let mut root = paths.first().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    for p in paths {
        while !p.starts_with(&root) {
            if !root.pop() {
                break;
            }
        }
    }
    root
}

/// The ConfigMap of the matrix's files, its volume's items, and the matrix file's path in the pods.
fn config_map(plan: &Plan, name: &str, labels: &BTreeMap<String, String>) -> Result<(ConfigMap, Vec<KeyToPath>, String)> {
    let mut files = vec![plan.path.clone()];
    for b in &plan.builds {
        for f in &b.files {
            if !files.contains(f) {
                files.push(f.clone());
            }
        }
    }
    let root = common_root(&files);
    let mut data = BTreeMap::new();
    let mut items = Vec::new();
    let mut total = 0;
    for (i, f) in files.iter().enumerate() {
        let rel = f.strip_prefix(&root).unwrap_or(f).to_string_lossy().into_owned();
        let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("reading {} for the ConfigMap: {e}", f.display()))?;
        total += text.len();
        let base: String = f.file_name().map_or("file".into(), |n| n.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '_' }).collect());
        let key = format!("f{i}-{base}");
        data.insert(key.clone(), text);
        items.push(KeyToPath { key, path: rel });
    }
    if total > CONFIGMAP_LIMIT {
        bail!("the matrix's files total {total} bytes, more than a ConfigMap holds (1 MiB); ship them in the container image instead");
    }
    let matrix_in_pod = format!("{SRC_DIR}/{}", plan.path.strip_prefix(&root).unwrap_or(&plan.path).display());
    let cm = ConfigMap { api_version: "v1", kind: "ConfigMap", metadata: ObjectMeta { name: Some(name.to_string()), labels: labels.clone(), ..Default::default() }, data };
    Ok((cm, items, matrix_in_pod))
}

/// Refuses base images the pods cannot reach: a `path` must be absolute and under the cache
/// volume.
fn check_bases(plan: &Plan) -> Result<()> {
    for (base, arches) in &plan.file.bases {
        for (arch, img) in arches {
            if !plan.builds.iter().any(|b| &b.base == base && b.arch == *arch) {
                continue;
            }
            if let Some(p) = &img.path {
                if !p.starts_with(&format!("{CACHE_DIR}/")) {
                    bail!(
                        "{}: bases.{base}.{arch}: path {p} would not exist in the pods: give an absolute path under {CACHE_DIR} (the cache volume, where the image and its SHA256SUMS must be copied), or a url",
                        plan.path.display()
                    );
                }
            }
        }
    }
    Ok(())
}

fn volumes(cm_name: &str, items: Vec<KeyToPath>, opts: &RenderOptions, work_limit: &str) -> Vec<Volume> {
    let v = |name: &str| Volume { name: name.into(), config_map: None, persistent_volume_claim: None, host_path: None, empty_dir: None };
    vec![
        Volume { config_map: Some(ConfigMapVolume { name: cm_name.into(), items }), ..v("matrix") },
        Volume { persistent_volume_claim: Some(PvcVolume { claim_name: opts.cache_pvc.clone() }), ..v("cache") },
        Volume { persistent_volume_claim: Some(PvcVolume { claim_name: opts.output_pvc.clone() }), ..v("out") },
        Volume { host_path: Some(HostPathVolume { path: "/dev".into(), kind: "Directory".into() }), ..v("dev") },
        Volume { empty_dir: Some(EmptyDirVolume { size_limit: work_limit.into() }), ..v("work") },
    ]
}

fn container(opts: &RenderOptions, command: Vec<String>, env: Vec<EnvVar>, resources: Resources) -> Container {
    let m = |name: &str, path: &str, ro: bool| VolumeMount { name: name.into(), mount_path: path.into(), read_only: ro };
    Container {
        name: "kib".into(),
        image: opts.image.clone(),
        command,
        working_dir: SRC_DIR.into(),
        env,
        security_context: SecurityContext { privileged: true },
        resources,
        volume_mounts: vec![m("matrix", SRC_DIR, true), m("cache", CACHE_DIR, false), m("out", OUT_DIR, false), m("dev", "/dev", false), m("work", "/var/tmp/kib", false)],
    }
}

/// The `kib matrix run` command line of a pod. Without `index`, kib reads it from
/// `JOB_COMPLETION_INDEX` (`$(VAR)` expansion in a command is the kubelet's, which other engines,
/// such as `podman kube play`, do not do).
fn run_command(matrix: &str, arch: Option<Arch>, index: Option<&str>) -> Vec<String> {
    let mut c: Vec<String> = ["kib", "matrix", "run", matrix].iter().map(|s| s.to_string()).collect();
    if let Some(a) = arch {
        c.extend(["--arch".into(), a.name().into()]);
    }
    if let Some(i) = index {
        c.extend(["--index".into(), i.into()]);
    }
    c.extend(["--output-dir".into(), OUT_DIR.into(), "--cache-dir".into(), CACHE_DIR.into()]);
    c
}

/// The YAML documents (`---`-separated) for `opts.target`.
///
/// Errors: a base image the pods cannot reach, or files too large for a ConfigMap.
pub fn render(plan: &Plan, opts: &RenderOptions) -> Result<String> {
    check_bases(plan)?;
    let name = dns_name(&plan.name, 40);
    let labels = BTreeMap::from([("app.kubernetes.io/name".to_string(), "kib".to_string()), ("kib.dev/matrix".to_string(), name.clone())]);
    let cm_name = format!("{name}-matrix");
    let (cm, items, matrix_in_pod) = config_map(plan, &cm_name, &labels)?;
    let (resources, sized) = resources(plan, opts.measured.as_ref());
    let work_limit = resources.requests["ephemeral-storage"].clone();
    let annotations = BTreeMap::from([("kib.dev/resources".to_string(), sized)]);
    let mut docs = vec![yaml_serde::to_string(&cm)?];
    let arches: Vec<Arch> = {
        let mut a: Vec<Arch> = plan.builds.iter().map(|b| b.arch).collect();
        a.sort();
        a.dedup();
        a
    };
    let selector = |a: Arch| BTreeMap::from([("kubernetes.io/arch".to_string(), a.name().to_string())]);
    match opts.target {
        RenderTarget::Kubernetes => {
            // One Job per architecture (its pods share a nodeSelector), or one on amd64 nodes.
            let groups: Vec<(Option<Arch>, usize)> = if opts.emulate_foreign {
                vec![(None, plan.builds.len())]
            } else {
                arches.iter().map(|a| (Some(*a), plan.builds.iter().filter(|b| b.arch == *a).count())).collect()
            };
            for (arch, count) in groups {
                let job_name = match arch {
                    Some(a) if arches.len() > 1 => format!("{name}-{a}"),
                    _ => name.clone(),
                };
                let env = vec![EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: None,
                    value_from: Some(EnvVarSource { field_ref: FieldRef { field_path: "metadata.annotations['batch.kubernetes.io/job-completion-index']".into() } }),
                }];
                let mut pod_labels = labels.clone();
                pod_labels.insert("kib.dev/job".into(), job_name.clone());
                let job = Job {
                    api_version: "batch/v1",
                    kind: "Job",
                    metadata: ObjectMeta { name: Some(job_name), labels: labels.clone(), annotations: annotations.clone(), ..Default::default() },
                    spec: JobSpec {
                        completion_mode: "Indexed",
                        completions: count,
                        parallelism: opts.jobs.min(count as u32).max(1),
                        backoff_limit_per_index: opts.retries,
                        ttl_seconds_after_finished: 86400,
                        template: PodTemplateSpec {
                            metadata: ObjectMeta { labels: pod_labels, ..Default::default() },
                            spec: PodSpec {
                                restart_policy: "Never",
                                node_selector: selector(arch.unwrap_or(Arch::Amd64)),
                                containers: vec![container(opts, run_command(&matrix_in_pod, arch, None), env, resources.clone())],
                                volumes: volumes(&cm_name, items.clone(), opts, &work_limit),
                            },
                        },
                    },
                };
                docs.push(yaml_serde::to_string(&job)?);
            }
        }
        RenderTarget::Argo => {
            let template_of = |a: Arch| if opts.emulate_foreign { "build".to_string() } else { format!("build-{a}") };
            let steps: Vec<WorkflowStep> = plan
                .builds
                .iter()
                .map(|b| WorkflowStep {
                    name: dns_name(&format!("b{}-{}", b.index, b.name), 63),
                    template: template_of(b.arch),
                    arguments: Inputs { parameters: vec![Parameter { name: "index".into(), value: Some(b.index.to_string()) }] },
                })
                .collect();
            let mut templates = vec![Template { name: "matrix".into(), inputs: None, steps: Some(vec![steps]), retry_strategy: None, node_selector: BTreeMap::new(), container: None }];
            let build_arches: Vec<Option<Arch>> = if opts.emulate_foreign { vec![None] } else { arches.iter().map(|a| Some(*a)).collect() };
            for a in build_arches {
                templates.push(Template {
                    name: a.map_or("build".to_string(), template_of),
                    inputs: Some(Inputs { parameters: vec![Parameter { name: "index".into(), value: None }] }),
                    steps: None,
                    retry_strategy: Some(RetryStrategy { limit: opts.retries.to_string(), retry_policy: "OnFailure".into() }),
                    node_selector: selector(a.unwrap_or(Arch::Amd64)),
                    container: Some(container(opts, run_command(&matrix_in_pod, None, Some("{{inputs.parameters.index}}")), Vec::new(), resources.clone())),
                });
            }
            let wf = Workflow {
                api_version: "argoproj.io/v1alpha1",
                kind: "Workflow",
                metadata: ObjectMeta { generate_name: Some(format!("{name}-")), labels: labels.clone(), annotations: annotations.clone(), ..Default::default() },
                spec: WorkflowSpec {
                    entrypoint: "matrix".into(),
                    parallelism: opts.jobs.max(1),
                    ttl_strategy: TtlStrategy { seconds_after_completion: 86400 },
                    volumes: volumes(&cm_name, items, opts, &work_limit),
                    templates,
                },
            };
            docs.push(yaml_serde::to_string(&wf)?);
        }
    }
    let head = format!(
        "# kib matrix render --target {} of {} ({} builds), by kib {}.\n",
        match opts.target {
            RenderTarget::Kubernetes => "kubernetes",
            RenderTarget::Argo => "argo",
        },
        plan.path.display(),
        plan.builds.len(),
        env!("CARGO_PKG_VERSION")
    );
    Ok(format!("{head}---\n{}", docs.join("---\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_roots() {
        assert_eq!(dns_name("Debian_12 nodes!", 40), "debian-12-nodes");
        assert_eq!(dns_name("--", 40), "kib");
        assert_eq!(dns_name("abcdef", 3), "abc");
        assert_eq!(common_root(&["/a/b/c.yaml".into(), "/a/b/d/e.yaml".into(), "/a/x.yaml".into()]), Path::new("/a"));
        assert_eq!(common_root(&["/a/b/c.yaml".into()]), Path::new("/a/b"));
        assert_eq!(mib_string((1 << 20) + 1), "2Mi");
    }
}
