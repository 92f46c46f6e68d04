//! The YAML under `manifests/` as typed k8s-openapi objects, parsed strictly: a field the type
//! does not know (a typo, a wrong indent) is an error naming the file, the object and the field.
//! Applying is server-side apply of the typed object, so code changes typed fields, never text.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::platform::paths::project_root;

/// The field manager for server-side apply.
pub const FIELD_MANAGER: &str = "iris-serve-xtask";

/// Every kind this project's manifests use.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    Service(Box<Service>),
    Deployment(Box<Deployment>),
    HorizontalPodAutoscaler(Box<HorizontalPodAutoscaler>),
    APIService(APIService),
    /// Any other kind, in a user's app folder: applied as it is written, its resource found
    /// through the API server's discovery (which also says whether it is namespaced).
    Other(Box<Other>),
}

/// An object of a kind the harness has no type for (a ConfigMap, a Secret, a
/// PodDisruptionBudget, a custom resource ...).
#[derive(Debug, Clone)]
pub struct Other {
    pub api_version: String,
    pub kind: String,
    pub value: Value,
}

/// Kinds that are cluster-scoped in Kubernetes itself (and in the common add-ons): refused in an
/// app folder when it is read, before any cluster exists. Discovery catches the rest at apply.
const CLUSTER_SCOPED: [&str; 17] = [
    "Namespace",
    "Node",
    "PersistentVolume",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "APIService",
    "StorageClass",
    "CSIDriver",
    "CSINode",
    "PriorityClass",
    "RuntimeClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ClusterIssuer",
];

fn cluster_scoped(what: &str, kind: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: {kind} is cluster-scoped; an app folder holds only namespaced objects, which the \
         run applies in its own namespace: remove it from the folder (install it in the cluster \
         beforehand if the app needs it)"
    )
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::Service(_) => "Service",
            Object::Deployment(_) => "Deployment",
            Object::HorizontalPodAutoscaler(_) => "HorizontalPodAutoscaler",
            Object::APIService(_) => "APIService",
            Object::Other(_) => "",
        }
    }

    /// The kind as written (an [`Other`]'s own).
    pub fn kind_name(&self) -> String {
        match self {
            Object::Other(o) => o.kind.clone(),
            _ => self.kind().to_owned(),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Object::Namespace(o) => o.name_any(),
            Object::ServiceAccount(o) => o.name_any(),
            Object::ClusterRole(o) => o.name_any(),
            Object::ClusterRoleBinding(o) => o.name_any(),
            Object::Role(o) => o.name_any(),
            Object::RoleBinding(o) => o.name_any(),
            Object::Service(o) => o.name_any(),
            Object::Deployment(o) => o.name_any(),
            Object::HorizontalPodAutoscaler(o) => o.name_any(),
            Object::APIService(o) => o.name_any(),
            Object::Other(o) => o.value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// The object as the API server sees it (with apiVersion and kind).
    pub fn to_value(&self) -> anyhow::Result<Value> {
        Ok(match self {
            Object::Namespace(o) => serde_json::to_value(o)?,
            Object::ServiceAccount(o) => serde_json::to_value(o)?,
            Object::ClusterRole(o) => serde_json::to_value(o)?,
            Object::ClusterRoleBinding(o) => serde_json::to_value(o)?,
            Object::Role(o) => serde_json::to_value(o)?,
            Object::RoleBinding(o) => serde_json::to_value(o)?,
            Object::Service(o) => serde_json::to_value(o)?,
            Object::Deployment(o) => serde_json::to_value(o)?,
            Object::HorizontalPodAutoscaler(o) => serde_json::to_value(o)?,
            Object::APIService(o) => serde_json::to_value(o)?,
            Object::Other(o) => o.value.clone(),
        })
    }

    /// Puts a namespaced object in `namespace` (cluster-scoped ones are left as they are).
    pub fn set_namespace(&mut self, namespace: &str) {
        let ns = Some(namespace.to_owned());
        match self {
            Object::Namespace(_)
            | Object::ClusterRole(_)
            | Object::ClusterRoleBinding(_)
            | Object::APIService(_) => {}
            Object::ServiceAccount(o) => o.metadata.namespace = ns,
            Object::Role(o) => o.metadata.namespace = ns,
            Object::RoleBinding(o) => {
                // Its ServiceAccounts in the namespace the file named are the ones moved with it.
                let old = o.metadata.namespace.replace(namespace.to_owned());
                for s in o.subjects.iter_mut().flatten() {
                    if s.kind == "ServiceAccount" && (s.namespace.is_none() || s.namespace == old) {
                        s.namespace = ns.clone();
                    }
                }
            }
            Object::Service(o) => o.metadata.namespace = ns,
            Object::Deployment(o) => o.metadata.namespace = ns,
            Object::HorizontalPodAutoscaler(o) => o.metadata.namespace = ns,
            Object::Other(o) => o.value["metadata"]["namespace"] = Value::from(namespace),
        }
    }

    /// The typed kinds' resource; an [`Other`]'s comes from discovery (see [`apply`]).
    fn api_resource(&self) -> Option<ApiResource> {
        Some(match self {
            Object::Namespace(_) => ApiResource::erase::<Namespace>(&()),
            Object::ServiceAccount(_) => ApiResource::erase::<ServiceAccount>(&()),
            Object::ClusterRole(_) => ApiResource::erase::<ClusterRole>(&()),
            Object::ClusterRoleBinding(_) => ApiResource::erase::<ClusterRoleBinding>(&()),
            Object::Role(_) => ApiResource::erase::<Role>(&()),
            Object::RoleBinding(_) => ApiResource::erase::<RoleBinding>(&()),
            Object::Service(_) => ApiResource::erase::<Service>(&()),
            Object::Deployment(_) => ApiResource::erase::<Deployment>(&()),
            Object::HorizontalPodAutoscaler(_) => {
                ApiResource::erase::<HorizontalPodAutoscaler>(&())
            }
            Object::APIService(_) => ApiResource::erase::<APIService>(&()),
            Object::Other(_) => return None,
        })
    }

    fn namespace(&self) -> Option<String> {
        match self {
            Object::Namespace(_)
            | Object::ClusterRole(_)
            | Object::ClusterRoleBinding(_)
            | Object::APIService(_) => None,
            Object::ServiceAccount(o) => o.namespace(),
            Object::Role(o) => o.namespace(),
            Object::RoleBinding(o) => o.namespace(),
            Object::Service(o) => o.namespace(),
            Object::Deployment(o) => o.namespace(),
            Object::HorizontalPodAutoscaler(o) => o.namespace(),
            Object::Other(o) => o.value["metadata"]["namespace"].as_str().map(str::to_owned),
        }
    }

    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind_name(), self.name()),
            None => format!("{} {}", self.kind_name(), self.name()),
        }
    }
}

/// Parses a value into `T` and fails if serializing `T` back loses or changes anything.
pub fn strict<T: DeserializeOwned + Serialize>(value: &Value, what: &str) -> anyhow::Result<T> {
    let typed: T = serde_json::from_value(value.clone())
        .with_context(|| format!("{what}: does not match its schema"))?;
    let back = serde_json::to_value(&typed)?;
    if let Some(path) = first_difference(value, &back, String::new()) {
        bail!("{what}: field `{path}` is not part of the schema (a typo, or in the wrong place?)");
    }
    Ok(typed)
}

/// The path of the first place `written` has something `typed` does not (or differs).
fn first_difference(written: &Value, typed: &Value, path: String) -> Option<String> {
    match (written, typed) {
        (Value::Object(w), Value::Object(t)) => {
            for (k, wv) in w {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    Some(tv) => {
                        if let Some(p) = first_difference(wv, tv, sub) {
                            return Some(p);
                        }
                    }
                    // An explicitly empty value that the type omits is not a typo.
                    None if is_empty(wv) => {}
                    None => return Some(sub),
                }
            }
            None
        }
        (Value::Array(w), Value::Array(t)) if w.len() == t.len() => w
            .iter()
            .zip(t)
            .enumerate()
            .find_map(|(i, (wv, tv))| first_difference(wv, tv, format!("{path}[{i}]"))),
        (Value::Number(w), Value::Number(t)) if w.as_f64() == t.as_f64() => None,
        // A quantity written as a number (`cpu: 1`, `memory: 1e9`) is a string once typed.
        (Value::Number(w), Value::String(t))
            if w.as_f64().is_some() && t.parse::<f64>().ok() == w.as_f64() =>
        {
            None
        }
        (w, t) if w == t => None,
        _ => Some(path),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Every document of a multi-document YAML text, as typed objects.
pub fn parse_yaml(text: &str, source: &str) -> anyhow::Result<Vec<Object>> {
    parse_documents(text, source, false)
}

/// A user's app folder's YAML: the kinds the harness reads (Deployment, Service,
/// HorizontalPodAutoscaler ...) typed and strict, any other namespaced kind as written;
/// cluster-scoped kinds refused.
pub fn parse_app_yaml(text: &str, source: &str) -> anyhow::Result<Vec<Object>> {
    parse_documents(text, source, true)
}

fn parse_documents(text: &str, source: &str, app: bool) -> anyhow::Result<Vec<Object>> {
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc)
            .with_context(|| format!("{source}: document {} is not valid YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
        let name = value["metadata"]["name"].as_str().unwrap_or("?");
        let what = format!("{source}: {kind} {name}");
        if app && CLUSTER_SCOPED.contains(&kind.as_str()) {
            return Err(cluster_scoped(&what, &kind));
        }
        // A scenario file or a tool's settings next to the manifests: not an object at all.
        if app && kind.is_empty() && api_version.is_empty() {
            // Said once per document: the folder is read again at every deploy.
            static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
            let note = format!(
                "  {source}: document {} has no apiVersion and no kind: not a Kubernetes object, left out",
                i + 1
            );
            let mut said = SAID
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !said.contains(&note) {
                eprintln!("{note}");
                said.push(note);
            }
            continue;
        }
        // kustomize's own files are instructions to kustomize, not objects for the API server.
        if app && api_version.starts_with("kustomize.config.k8s.io/") {
            bail!(
                "{source}: a {kind} is read by kustomize, not applied: render the folder first \
                 (`kubectl kustomize DIR > rendered/app.yaml`, or `kustomize build DIR`) and give \
                 --app the folder of the rendered YAML"
            );
        }
        if app && (kind.is_empty() || api_version.is_empty() || name == "?") {
            bail!("{what}: every object needs apiVersion, kind and metadata.name");
        }
        let object = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => Object::Namespace(strict(&value, &what)?),
            ("v1", "ServiceAccount") => Object::ServiceAccount(strict(&value, &what)?),
            ("v1", "Service") => Object::Service(Box::new(strict(&value, &what)?)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                Object::ClusterRole(strict(&value, &what)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                Object::ClusterRoleBinding(strict(&value, &what)?)
            }
            ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(strict(&value, &what)?),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                Object::RoleBinding(strict(&value, &what)?)
            }
            ("apps/v1", "Deployment") => Object::Deployment(Box::new(strict(&value, &what)?)),
            ("autoscaling/v2", "HorizontalPodAutoscaler") => {
                Object::HorizontalPodAutoscaler(Box::new(strict(&value, &what)?))
            }
            ("apiregistration.k8s.io/v1", "APIService") => {
                Object::APIService(strict(&value, &what)?)
            }
            _ if app => Object::Other(Box::new(Other {
                api_version,
                kind,
                value,
            })),
            _ => bail!(
                "{what}: apiVersion {api_version:?} kind {kind:?} is not one this harness knows"
            ),
        };
        objects.push(object);
    }
    Ok(objects)
}

/// All YAML files of a folder under `manifests/`, in file-name order.
pub fn load_dir(relative: &str) -> anyhow::Result<Vec<Object>> {
    let objects = read_dir(&project_root().join(relative), parse_yaml)?;
    validate(&objects).with_context(|| format!("{relative}: not a valid set of manifests"))?;
    Ok(objects)
}

/// A user's app folder: its YAML files in file-name order, read with [`parse_app_yaml`], every
/// namespaced object put in `namespace` (the run's, whatever the files say).
pub fn load_app_dir(dir: &Path, namespace: &str) -> anyhow::Result<Vec<Object>> {
    let mut objects = read_dir(dir, parse_app_yaml)?;
    for o in &mut objects {
        o.set_namespace(namespace);
    }
    validate(&objects).with_context(|| format!("{}: not a valid app", dir.display()))?;
    Ok(objects)
}

fn read_dir(
    dir: &Path,
    parse: fn(&str, &str) -> anyhow::Result<Vec<Object>>,
) -> anyhow::Result<Vec<Object>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        objects.extend(parse(&text, &source_name(&file))?);
    }
    // Namespaces first, so everything in them can be created.
    objects.sort_by_key(|o| !matches!(o, Object::Namespace(_)));
    Ok(objects)
}

/// A file's name as messages give it: relative to the project when it is inside.
fn source_name(path: &Path) -> String {
    path.strip_prefix(project_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A readiness probe must wait this long (seconds) and tolerate this many failures before it
/// takes a pod out of the Service: an autoscaled pod throttled at its CPU limit under thousands
/// of connections answers `/ready` late, and a probe that gives up at once empties the Service.
pub const MIN_READINESS_TIMEOUT_S: i32 = 3;
pub const MIN_READINESS_FAILURES: i32 = 3;

/// Rules the schema cannot express, over the objects of one folder:
/// - no Deployment sets `spec.replicas`: the HPA owns the count, and the harness force-applies
///   the manifests before every scenario, which would take it back (the rule holds for every
///   Deployment, so one moved out from under an HPA cannot bring the field back unnoticed);
/// - every container of a Deployment an HPA scales has a CPU request (the utilization is
///   relative to it) and a readiness probe with `timeoutSeconds >= 3` and
///   `failureThreshold >= 3` (Kubernetes' defaults are 1 and 3).
pub fn validate(objects: &[Object]) -> anyhow::Result<()> {
    let autoscaled: Vec<(Option<String>, &str)> = objects
        .iter()
        .filter_map(|o| match o {
            Object::HorizontalPodAutoscaler(h) => {
                let target = &h.spec.as_ref()?.scale_target_ref;
                (target.kind == "Deployment").then(|| (h.namespace(), target.name.as_str()))
            }
            _ => None,
        })
        .collect();
    for object in objects {
        let Object::Deployment(d) = object else {
            continue;
        };
        let what = object.describe();
        let Some(spec) = &d.spec else {
            continue;
        };
        if let Some(replicas) = spec.replicas {
            bail!(
                "{what}: sets spec.replicas ({replicas}); remove it: the HorizontalPodAutoscaler owns \
                 the replica count (its minReplicas governs), and every forced server-side apply \
                 would take it back"
            );
        }
        if !autoscaled.contains(&(d.namespace(), d.name_any().as_str())) {
            continue;
        }
        for c in spec.template.spec.iter().flat_map(|p| &p.containers) {
            let cpu_request = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some_and(|r| r.contains_key("cpu"));
            if !cpu_request {
                bail!(
                    "{what}: container {} has no CPU request (resources.requests.cpu); the HPA's \
                     CPU utilization is relative to every container's request, and without one it \
                     cannot act: set one",
                    c.name
                );
            }
            let Some(probe) = &c.readiness_probe else {
                bail!(
                    "{what}: container {} has no readinessProbe; an autoscaled pod needs one",
                    c.name
                );
            };
            // Kubernetes' defaults when the fields are omitted.
            let timeout = probe.timeout_seconds.unwrap_or(1);
            let failures = probe.failure_threshold.unwrap_or(3);
            if timeout < MIN_READINESS_TIMEOUT_S || failures < MIN_READINESS_FAILURES {
                bail!(
                    "{what}: container {}: readinessProbe timeoutSeconds {timeout} and \
                     failureThreshold {failures} must be at least {MIN_READINESS_TIMEOUT_S} and \
                     {MIN_READINESS_FAILURES}: a pod throttled at its CPU limit under load answers \
                     late, and a probe that gives up at once takes it out of the Service",
                    c.name
                );
            }
        }
    }
    Ok(())
}

/// Checks a pod against Pod Security Standard "restricted" (upstream's pod-security-admission
/// checks: host namespaces, privileged, host paths and ports, volume types, privilege escalation,
/// running as non-root, seccomp, capabilities) plus the house rule of a read-only root filesystem.
pub fn restricted(pod: &PodSpec, what: &str) -> anyhow::Result<()> {
    let fail = |rule: &str| anyhow::anyhow!("{what}: not Pod Security \"restricted\": {rule}");
    if pod.host_network == Some(true) || pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        return Err(fail(
            "it uses a host namespace (hostNetwork, hostPID or hostIPC)",
        ));
    }
    const VOLUMES: [&str; 9] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in pod.volumes.iter().flatten() {
        let value = serde_json::to_value(v)?;
        let kinds: Vec<&String> = value
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "name").collect())
            .unwrap_or_default();
        if let Some(kind) = kinds.iter().find(|k| !VOLUMES.contains(&k.as_str())) {
            return Err(fail(&format!("volume {} is of type {kind}", v.name)));
        }
    }
    let pod_sc = pod.security_context.as_ref();
    let pod_non_root = pod_sc.and_then(|s| s.run_as_non_root);
    if pod_non_root == Some(false) {
        return Err(fail("the pod sets runAsNonRoot: false"));
    }
    let seccomp_ok = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
    let pod_seccomp_type = pod_sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    if pod_seccomp_type.is_some() && !seccomp_ok(pod_seccomp_type) {
        return Err(fail(
            "the pod's seccompProfile must be RuntimeDefault or Localhost",
        ));
    }
    let pod_seccomp = seccomp_ok(pod_seccomp_type);
    if pod_sc.and_then(|s| s.run_as_user) == Some(0) {
        return Err(fail("the pod runs as user 0"));
    }
    // Baseline rules that apply at both levels: AppArmor, SELinux, sysctls, Windows host process.
    let apparmor_ok =
        |t: Option<&str>| t.is_none_or(|t| matches!(t, "RuntimeDefault" | "Localhost"));
    let selinux_ok = |o: Option<&k8s_openapi::api::core::v1::SELinuxOptions>| {
        o.is_none_or(|o| {
            o.user.as_deref().unwrap_or_default().is_empty()
                && o.role.as_deref().unwrap_or_default().is_empty()
                && matches!(
                    o.type_.as_deref().unwrap_or_default(),
                    "" | "container_t"
                        | "container_init_t"
                        | "container_kvm_t"
                        | "container_engine_t"
                )
        })
    };
    if let Some(sc) = pod_sc {
        if !apparmor_ok(sc.app_armor_profile.as_ref().map(|p| p.type_.as_str())) {
            return Err(fail(
                "the pod's appArmorProfile must be RuntimeDefault or Localhost",
            ));
        }
        if !selinux_ok(sc.se_linux_options.as_ref()) {
            return Err(fail("the pod's seLinuxOptions are not allowed"));
        }
        const SAFE_SYSCTLS: [&str; 8] = [
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.ip_unprivileged_port_start",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ping_group_range",
            "net.ipv4.ip_local_reserved_ports",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
        ];
        let more_safe = [
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ];
        if let Some(bad) = sc.sysctls.iter().flatten().find(|x| {
            !SAFE_SYSCTLS.contains(&x.name.as_str()) && !more_safe.contains(&x.name.as_str())
        }) {
            return Err(fail(&format!("sysctl {} is not in the safe set", bad.name)));
        }
        if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
            return Err(fail("the pod is a Windows host process"));
        }
    }
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in containers {
        let sc = c.security_context.as_ref();
        let name = &c.name;
        if sc.and_then(|s| s.privileged) == Some(true) {
            return Err(fail(&format!("container {name} is privileged")));
        }
        if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            return Err(fail(&format!(
                "container {name} must set allowPrivilegeEscalation: false"
            )));
        }
        let own_non_root = sc.and_then(|s| s.run_as_non_root);
        if own_non_root == Some(false)
            || !(pod_non_root == Some(true) || own_non_root == Some(true))
        {
            return Err(fail(&format!(
                "container {name} must run as non-root (runAsNonRoot: true)"
            )));
        }
        if !apparmor_ok(
            sc.and_then(|s| s.app_armor_profile.as_ref())
                .map(|p| p.type_.as_str()),
        ) || !selinux_ok(sc.and_then(|s| s.se_linux_options.as_ref()))
            || sc
                .and_then(|s| s.proc_mount.as_deref())
                .is_some_and(|m| m != "Default")
            || sc
                .and_then(|s| s.windows_options.as_ref())
                .and_then(|w| w.host_process)
                == Some(true)
        {
            return Err(fail(&format!(
                "container {name}: appArmorProfile, seLinuxOptions, procMount or hostProcess is not allowed"
            )));
        }
        let probes = [&c.readiness_probe, &c.liveness_probe, &c.startup_probe];
        let probe_host = probes.iter().filter_map(|p| p.as_ref()).any(|p| {
            let http = p.http_get.as_ref().and_then(|h| h.host.as_deref());
            let tcp = p.tcp_socket.as_ref().and_then(|t| t.host.as_deref());
            http.is_some_and(|h| !h.is_empty()) || tcp.is_some_and(|h| !h.is_empty())
        });
        if probe_host {
            return Err(fail(&format!("container {name}: a probe names a host")));
        }
        if sc.and_then(|s| s.run_as_user) == Some(0) {
            return Err(fail(&format!("container {name} runs as user 0")));
        }
        let own_seccomp = sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str());
        if !(seccomp_ok(own_seccomp) || (own_seccomp.is_none() && pod_seccomp)) {
            return Err(fail(&format!(
                "container {name} needs seccompProfile RuntimeDefault or Localhost"
            )));
        }
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        if !caps
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        {
            return Err(fail(&format!(
                "container {name} must drop ALL capabilities"
            )));
        }
        if let Some(added) = caps
            .and_then(|c| c.add.as_ref())
            .and_then(|a| a.iter().find(|x| *x != "NET_BIND_SERVICE"))
        {
            return Err(fail(&format!("container {name} adds capability {added}")));
        }
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.host_port.unwrap_or(0) != 0)
        {
            return Err(fail(&format!("container {name} uses a hostPort")));
        }
        if sc.and_then(|s| s.read_only_root_filesystem) != Some(true) {
            bail!(
                "{what}: container {name} must have a read-only root filesystem (readOnlyRootFilesystem: true)"
            );
        }
    }
    Ok(())
}

/// Server-side apply, forcing ownership of the fields we set.
pub async fn apply(client: &Client, object: &Object) -> anyhow::Result<()> {
    let resource = match object.api_resource() {
        Some(r) => r,
        None => discover(client, object).await?,
    };
    let api: Api<DynamicObject> = match object.namespace() {
        Some(ns) => Api::namespaced_with(client.clone(), &ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let value = object.to_value()?;
    api.patch(
        &object.name(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await
    .with_context(|| format!("applying {}", object.describe()))?;
    Ok(())
}

/// An [`Other`]'s resource from the API server's discovery; a cluster-scoped one is refused (an
/// app's objects live in the run's namespace, and go with it).
async fn discover(client: &Client, object: &Object) -> anyhow::Result<ApiResource> {
    let what = object.describe();
    let (api_version, kind) = match object {
        Object::Other(o) => (o.api_version.as_str(), o.kind.as_str()),
        _ => unreachable!("typed objects have their resource"),
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| {
            format!("{what}: the API server does not serve apiVersion {api_version} kind {kind} (a CRD not installed, or a typo?)")
        })?;
    if caps.scope != kube::discovery::Scope::Namespaced {
        return Err(cluster_scoped(&what, kind));
    }
    Ok(resource)
}

pub fn deployment(objects: &mut [Object]) -> Option<&mut Deployment> {
    objects.iter_mut().find_map(|o| match o {
        Object::Deployment(d) => Some(d.as_mut()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_parses_strictly() {
        let app = load_dir("manifests/app").expect("manifests/app");
        let kinds: Vec<&str> = app.iter().map(Object::kind).collect();
        assert_eq!(kinds[0], "Namespace");
        for kind in ["Deployment", "Service", "HorizontalPodAutoscaler"] {
            assert!(kinds.contains(&kind), "{kinds:?}");
        }
        let ms = load_dir("manifests/metrics-server").expect("manifests/metrics-server");
        let names: Vec<String> = ms.iter().map(Object::describe).collect();
        for want in [
            "ServiceAccount kube-system/metrics-server",
            "ClusterRole system:aggregated-metrics-reader",
            "ClusterRole system:metrics-server",
            "RoleBinding kube-system/metrics-server-auth-reader",
            "ClusterRoleBinding metrics-server:system:auth-delegator",
            "ClusterRoleBinding system:metrics-server",
            "Service kube-system/metrics-server",
            "Deployment kube-system/metrics-server",
            "APIService v1beta1.metrics.k8s.io",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "missing {want} in {names:?}"
            );
        }
    }

    #[test]
    fn a_typo_is_an_error_that_names_the_field() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  selectr:\n    a: b\n";
        let err = parse_yaml(text, "t.yaml").expect_err("typo");
        assert!(err.to_string().contains("spec.selectr"), "{err}");
        let nested = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  selector: {}\n  template:\n    spec:\n      containers:\n        - name: c\n          imagePullPolicy: Never\n          readinessProbe:\n            httpGet: {path: /ready, port: 8080}\n            periodSecond: 2\n";
        let err = parse_yaml(nested, "t.yaml").expect_err("typo");
        assert!(
            err.to_string()
                .contains("containers[0].readinessProbe.periodSecond"),
            "{err}"
        );
        let wrong_type =
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports: 80\n";
        assert!(parse_yaml(wrong_type, "t.yaml").is_err());
        let unknown = "apiVersion: v9\nkind: Thing\nmetadata:\n  name: x\n";
        assert!(parse_yaml(unknown, "t.yaml").is_err());
        let kustomization = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [deployment.yaml]\n";
        let err = parse_app_yaml(kustomization, "kustomization.yaml").expect_err("kustomize");
        assert!(err.to_string().contains("render the folder first"), "{err}");
        // Quantities written as numbers are quantities, not typos (the API server takes them).
        let numbers = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  selector: {}\n  template:\n    spec:\n      containers:\n        - name: c\n          resources: {requests: {cpu: 1, memory: 268435456}, limits: {cpu: 1.0, memory: 1e9}}\n";
        parse_yaml(numbers, "t.yaml").expect("cpu: 1, cpu: 1.0 and memory: 1e9 are quantities");
    }

    #[test]
    fn a_rolebindings_service_accounts_move_with_it() {
        let text = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: rb\n  namespace: team\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}\nsubjects:\n  - {kind: ServiceAccount, name: app, namespace: team}\n  - {kind: ServiceAccount, name: mon, namespace: monitoring}\n  - {kind: User, name: jane, apiGroup: rbac.authorization.k8s.io}\n";
        let mut objects = parse_yaml(text, "t.yaml").expect("parses");
        objects[0].set_namespace("iris-serve");
        let Object::RoleBinding(rb) = &objects[0] else {
            panic!("a RoleBinding")
        };
        assert_eq!(rb.metadata.namespace.as_deref(), Some("iris-serve"));
        let namespaces: Vec<Option<&str>> = rb
            .subjects
            .iter()
            .flatten()
            .map(|s| s.namespace.as_deref())
            .collect();
        // Its own namespace's account follows it; another namespace's and a user stay.
        assert_eq!(namespaces, [Some("iris-serve"), Some("monitoring"), None]);
    }

    const HPA: &str = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: app\n  namespace: ns\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: app}\n  maxReplicas: 3\n";

    fn deployment_yaml(replicas: &str, probe: &str) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n  namespace: ns\nspec:\n{replicas}  selector: {{}}\n  template:\n    spec:\n      containers:\n        - name: c\n          resources: {{requests: {{cpu: 100m}}}}\n{probe}"
        )
    }

    fn check(text: &str) -> anyhow::Result<()> {
        validate(&parse_yaml(text, "t.yaml")?)
    }

    const GOOD_PROBE: &str = "          readinessProbe:\n            httpGet: {path: /ready, port: 8080}\n            timeoutSeconds: 3\n            failureThreshold: 3\n";

    #[test]
    fn a_deployment_that_sets_replicas_is_rejected() {
        let fine = format!("{}---\n{HPA}", deployment_yaml("", GOOD_PROBE));
        check(&fine).expect("no replicas, a patient probe");
        for replicas in ["  replicas: 1\n", "  replicas: 3\n"] {
            let text = format!("{}---\n{HPA}", deployment_yaml(replicas, GOOD_PROBE));
            let err = check(&text).expect_err("replicas").to_string();
            assert!(
                err.contains("Deployment ns/app") && err.contains("spec.replicas"),
                "{err}"
            );
        }
        // Without an HPA too: a forced apply would still reset the count on every run.
        let alone = deployment_yaml("  replicas: 2\n", "");
        assert!(check(&alone).is_err());
    }

    #[test]
    fn an_autoscaled_pod_needs_a_patient_readiness_probe() {
        let with_probe = |timeout: &str, failures: &str| {
            let mut probe =
                "          readinessProbe:\n            httpGet: {path: /ready, port: 8080}\n"
                    .to_owned();
            if !timeout.is_empty() {
                probe.push_str(&format!("            timeoutSeconds: {timeout}\n"));
            }
            if !failures.is_empty() {
                probe.push_str(&format!("            failureThreshold: {failures}\n"));
            }
            format!("{}---\n{HPA}", deployment_yaml("", &probe))
        };
        check(&with_probe("3", "3")).expect("3 and 3");
        check(&with_probe("5", "")).expect("failureThreshold defaults to 3");
        for (timeout, failures) in [("1", "1"), ("1", "3"), ("3", "1"), ("", "3"), ("2", "5")] {
            let err = check(&with_probe(timeout, failures))
                .expect_err("too tight")
                .to_string();
            assert!(
                err.contains("container c: readinessProbe timeoutSeconds"),
                "{timeout}/{failures}: {err}"
            );
        }
        let none = format!("{}---\n{HPA}", deployment_yaml("", ""));
        assert!(
            check(&none)
                .expect_err("no probe")
                .to_string()
                .contains("no readinessProbe")
        );
        // A Deployment no HPA scales (metrics-server's) keeps its upstream probe.
        check(&deployment_yaml(
            "",
            "          readinessProbe:\n            httpGet: {path: /readyz, port: 8080}\n",
        ))
        .expect("not autoscaled");
    }

    #[test]
    fn the_app_is_locked_down_and_autoscalable() {
        let mut app = load_dir("manifests/app").expect("manifests/app");
        let ns = app.iter().find_map(|o| match o {
            Object::Namespace(n) => Some(n.clone()),
            _ => None,
        });
        let labels = ns.expect("namespace").metadata.labels.expect("labels");
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        let d = deployment(&mut app).expect("deployment").clone();
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, None, "the HPA owns the replica count");
        let pod = spec.template.spec.expect("pod spec");
        restricted(&pod, "the app").expect("Pod Security restricted");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        let ready = c.readiness_probe.as_ref().expect("readinessProbe");
        assert!(
            ready.timeout_seconds >= Some(MIN_READINESS_TIMEOUT_S),
            "{ready:?}"
        );
        assert!(
            ready.failure_threshold >= Some(MIN_READINESS_FAILURES),
            "{ready:?}"
        );
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        let psc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        let requests = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .expect("requests");
        assert!(requests.contains_key("cpu"), "the HPA needs a CPU request");
        let env = c.env.as_ref().expect("env");
        assert!(
            env.iter()
                .any(|e| e.name == "POD_NAME" && e.value_from.is_some())
        );
        // The grace period covers preStop + the server's drain.
        let pre_stop = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|p| p.sleep.as_ref())
            .expect("preStop sleep");
        let args = c.args.as_ref().expect("args");
        let drain: i64 = args[args
            .iter()
            .position(|a| a == "--drain-seconds")
            .expect("drain")
            + 1]
        .parse()
        .expect("number");
        assert!(pod.termination_grace_period_seconds.expect("grace") > pre_stop.seconds + drain);
        let hpa = app.iter().find_map(|o| match o {
            Object::HorizontalPodAutoscaler(h) => Some(h.clone()),
            _ => None,
        });
        let spec = hpa.expect("hpa").spec.expect("spec");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 3));
        let down = spec.behavior.and_then(|b| b.scale_down).expect("scaleDown");
        assert!(down.stabilization_window_seconds.expect("window") <= 90);
    }
}
