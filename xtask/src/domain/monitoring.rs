//! `e2e --monitoring`: the PodMonitor of `manifests/monitoring/` for clusters that run the
//! Prometheus Operator. Applied (server-side, like the app) into the run's namespace, so it goes
//! away with that namespace; on a cluster without the PodMonitor CRD the run says so and goes on.
//! The Grafana dashboard beside it is imported by hand (README).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use crate::platform::manifests::{self, FIELD_MANAGER, Object};
use crate::platform::paths::project_root;

pub const POD_MONITOR_FILE: &str = "manifests/monitoring/podmonitor.yaml";
pub const DASHBOARD_FILE: &str = "manifests/monitoring/grafana-dashboard.json";
pub const CRD_NAME: &str = "podmonitors.monitoring.coreos.com";
const GROUP: &str = "monitoring.coreos.com";
const VERSION: &str = "v1";
const KIND: &str = "PodMonitor";
const PLURAL: &str = "podmonitors";
/// The server's metrics route (src/api.rs).
const METRICS_PATH: &str = "/metrics";

/// The part of the Prometheus Operator's PodMonitor (monitoring.coreos.com/v1) this project
/// writes. Any other field is refused when the file is read: a typo would otherwise be dropped by
/// the API server's pruning and the scrape would silently differ from what the file says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PodMonitorSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMetricsEndpoint {
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// The PodMonitor of `manifests/monitoring/`, parsed strictly.
pub fn pod_monitor() -> anyhow::Result<PodMonitor> {
    let path = project_root().join(POD_MONITOR_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_pod_monitor(&text)
}

pub fn parse_pod_monitor(text: &str) -> anyhow::Result<PodMonitor> {
    let value: serde_json::Value =
        serde_yaml::from_str(text).with_context(|| format!("{POD_MONITOR_FILE}: not YAML"))?;
    let monitor: PodMonitor = manifests::strict(&value, &format!("{POD_MONITOR_FILE}: {KIND}"))?;
    if monitor.api_version != format!("{GROUP}/{VERSION}") || monitor.kind != KIND {
        bail!(
            "{POD_MONITOR_FILE}: apiVersion {:?} kind {:?}, expected {GROUP}/{VERSION} {KIND}",
            monitor.api_version,
            monitor.kind
        );
    }
    Ok(monitor)
}

/// The PodMonitor must find the pods the app's objects make, and their metrics port:
/// - it lives in the app's namespace and looks only there;
/// - its selector (matchLabels only) matches the Deployment's pod template labels;
/// - each endpoint names a container port of the pod and scrapes the server's metrics route.
pub fn check_against_app(monitor: &PodMonitor, app: &mut [Object]) -> anyhow::Result<()> {
    let deployment = manifests::deployment(app).context("the app has no Deployment")?;
    let app_namespace = deployment
        .metadata
        .namespace
        .clone()
        .context("the app's Deployment has no namespace")?;
    let namespace = monitor.metadata.namespace.as_deref().unwrap_or_default();
    if namespace != app_namespace {
        bail!("the PodMonitor is in namespace {namespace:?}, the app in {app_namespace:?}");
    }
    if let Some(selector) = &monitor.spec.namespace_selector
        && (selector.any == Some(true)
            || !(selector.match_names.is_empty()
                || selector.match_names == [app_namespace.clone()]))
    {
        bail!(
            "the PodMonitor's namespaceSelector reaches beyond the app's namespace {app_namespace}"
        );
    }
    let selector = &monitor.spec.selector;
    if selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        bail!("the PodMonitor's selector uses matchExpressions; this check handles matchLabels");
    }
    let want: BTreeMap<String, String> = selector.match_labels.clone().unwrap_or_default();
    if want.is_empty() {
        bail!("the PodMonitor's selector is empty: it would scrape every pod of the namespace");
    }
    let template = &deployment
        .spec
        .as_ref()
        .context("the Deployment has no spec")?
        .template;
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (key, value) in &want {
        if labels.get(key) != Some(value) {
            bail!(
                "the PodMonitor selects pods labelled {key}={value}; the Deployment's pods carry {labels:?}"
            );
        }
    }
    let ports: Vec<String> = template
        .spec
        .iter()
        .flat_map(|p| &p.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.name.clone())
        .collect();
    if monitor.spec.pod_metrics_endpoints.is_empty() {
        bail!("the PodMonitor has no podMetricsEndpoints");
    }
    for endpoint in &monitor.spec.pod_metrics_endpoints {
        if !ports.contains(&endpoint.port) {
            bail!(
                "the PodMonitor scrapes port {:?}; the pod's named ports are {ports:?}",
                endpoint.port
            );
        }
        let path = endpoint.path.as_deref().unwrap_or(METRICS_PATH);
        if path != METRICS_PATH {
            bail!("the PodMonitor scrapes {path}; the server serves {METRICS_PATH}");
        }
        if let Some(scheme) = endpoint.scheme.as_deref().filter(|s| *s != "http") {
            bail!("the PodMonitor scrapes with {scheme}; the server speaks plain http");
        }
    }
    Ok(())
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied {
        namespace: String,
        name: String,
    },
    /// The cluster has no (served v1) PodMonitor CRD: nothing was applied; the reason.
    NoOperator(String),
}

fn api_resource() -> ApiResource {
    ApiResource {
        group: GROUP.to_owned(),
        version: VERSION.to_owned(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.to_owned(),
        plural: PLURAL.to_owned(),
    }
}

/// Applies the PodMonitor into `namespace` when the cluster serves the CRD, else says why not.
pub async fn apply(client: &Client, namespace: &str) -> anyhow::Result<Outcome> {
    let mut monitor = pod_monitor()?;
    check_against_app(
        &monitor,
        &mut manifests::load_dir(crate::domain::deploy::APP_DIR)?,
    )
    .with_context(|| format!("{POD_MONITOR_FILE} does not match manifests/app"))?;
    monitor.metadata.namespace = Some(namespace.to_owned());
    let name = monitor
        .metadata
        .name
        .clone()
        .context("the PodMonitor has no name")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(CRD_NAME).await {
        Ok(None) => {
            return Ok(Outcome::NoOperator(format!(
                "the cluster has no {CRD_NAME} CRD (no Prometheus Operator)"
            )));
        }
        Ok(Some(crd)) => {
            let served = crd
                .spec
                .versions
                .iter()
                .any(|v| v.name == VERSION && v.served);
            if !served {
                return Ok(Outcome::NoOperator(format!(
                    "the {CRD_NAME} CRD does not serve {VERSION}"
                )));
            }
        }
        // A user allowed into namespaces but not to read CRDs: the apply itself tells.
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        Err(e) => return Err(e).context(format!("looking up the {CRD_NAME} CRD")),
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource());
    let value = serde_json::to_value(&monitor)?;
    match api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
    {
        Ok(_) => Ok(Outcome::Applied {
            namespace: namespace.to_owned(),
            name,
        }),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Outcome::NoOperator(format!(
            "the cluster does not serve {GROUP}/{VERSION} {PLURAL} (no Prometheus Operator)"
        ))),
        Err(e) => Err(e).context(format!("applying {KIND} {namespace}/{name}")),
    }
}

/// `apply`, with what happened said on stderr: a cluster without the operator is not an error.
pub async fn apply_and_report(client: &Client, namespace: &str) -> anyhow::Result<()> {
    match apply(client, namespace).await? {
        Outcome::Applied { namespace, name } => eprintln!(
            "  applied {KIND} {namespace}/{name}: the cluster's Prometheus Operator scrapes the app's pods (dashboard: {DASHBOARD_FILE})"
        ),
        Outcome::NoOperator(why) => eprintln!(
            "  --monitoring: {why}; no PodMonitor applied (install the Prometheus Operator, or scrape the pods' /metrics on port http yourself)"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::deploy::{self, AppSettings, NAMESPACE};
    use crate::testkit::kubemock::{MockApi, json_response, status_response};

    fn app() -> Vec<Object> {
        deploy::app_objects(&AppSettings {
            app: deploy::App::ours().expect("manifests/app"),
            image: "iris-serve:test".to_owned(),
            pull_policy: "Never".to_owned(),
            max_replicas: None,
            fixed_node_port: true,
        })
        .expect("app objects")
    }

    #[test]
    fn the_pod_monitor_finds_the_app_pods_and_their_metrics_port() {
        let monitor = pod_monitor().expect("manifests/monitoring/podmonitor.yaml");
        check_against_app(&monitor, &mut app()).expect("matches the app");
        assert_eq!(monitor.metadata.namespace.as_deref(), Some(NAMESPACE));
    }

    #[test]
    fn a_pod_monitor_that_misses_the_app_is_refused() {
        let text = std::fs::read_to_string(project_root().join(POD_MONITOR_FILE)).expect("file");
        let broken = |from: &str, to: &str| {
            assert!(text.contains(from), "{from}");
            parse_pod_monitor(&text.replacen(from, to, 1))
                .and_then(|m| check_against_app(&m, &mut app()))
                .map_err(|e| format!("{e:#}"))
                .expect_err(to)
        };
        assert!(broken("port: http", "port: metrics").contains("named ports"));
        assert!(
            broken(
                "app.kubernetes.io/name: iris-serve\n  podMetricsEndpoints",
                "app.kubernetes.io/name: other\n  podMetricsEndpoints"
            )
            .contains("Deployment's pods carry")
        );
        assert!(broken("path: /metrics", "path: /metric").contains("serves /metrics"));
        assert!(broken("namespace: iris-serve", "namespace: default").contains("namespace"));
        // A typo is refused by the strict parse, naming the field.
        assert!(broken("podMetricsEndpoints", "podMetricEndpoints").contains("podMetricEndpoints"));
        assert!(broken("    - port: http", "    - prot: http").contains("prot"));
        assert!(broken("  labels:\n", "  label:\n").contains("metadata.label"));
        assert!(broken("kind: PodMonitor", "kind: ServiceMonitor").contains("expected"));
    }

    const CRD_PATH: &str =
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/podmonitors.monitoring.coreos.com";

    /// The CRD as the Prometheus Operator installs it and the API server returns it (trimmed
    /// schema, the rest as stored).
    fn crd(served: bool) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": CRD_NAME, "uid": "0b7c", "resourceVersion": "812", "generation": 1,
                         "annotations": {"operator.prometheus.io/version": "0.85.0"}},
            "spec": {
                "group": GROUP, "scope": "Namespaced",
                "names": {"kind": KIND, "listKind": "PodMonitorList", "plural": PLURAL,
                          "singular": "podmonitor", "shortNames": ["pmon"], "categories": ["prometheus-operator"]},
                "conversion": {"strategy": "None"},
                "versions": [{"name": VERSION, "served": served, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object"}}}]
            },
            "status": {
                "acceptedNames": {"kind": KIND, "listKind": "PodMonitorList", "plural": PLURAL, "singular": "podmonitor"},
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": "2026-07-01T10:00:00Z"},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": "2026-07-01T10:00:00Z"}
                ],
                "storedVersions": [VERSION]
            }
        })
    }

    /// A 404 as the API server sends it for a named object that does not exist.
    fn crd_not_found() -> http::Response<kube::client::Body> {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("customresourcedefinitions.apiextensions.k8s.io \"{CRD_NAME}\" not found"),
            "reason": "NotFound",
            "details": {"name": CRD_NAME, "group": "apiextensions.k8s.io", "kind": "customresourcedefinitions"},
            "code": 404
        });
        http::Response::builder()
            .status(404)
            .header("content-type", "application/json")
            .body(kube::client::Body::from(
                serde_json::to_vec(&status).expect("json"),
            ))
            .expect("response")
    }

    #[tokio::test]
    async fn with_the_crd_the_pod_monitor_is_applied_into_the_run_namespace() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            api.expect("GET", CRD_PATH, json_response(crd(true))).await;
            let path =
                format!("/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/iris-serve");
            let mut stored = serde_json::to_value(pod_monitor().expect("file")).expect("value");
            stored["metadata"]["uid"] = "5d1e".into();
            stored["metadata"]["resourceVersion"] = "901".into();
            stored["metadata"]["generation"] = 1.into();
            let (query, body) = api.expect("PATCH", &path, json_response(stored)).await;
            assert!(
                query.contains("fieldManager=iris-serve-xtask") && query.contains("force=true"),
                "{query}"
            );
            assert_eq!(body["apiVersion"], "monitoring.coreos.com/v1");
            assert_eq!(body["kind"], KIND);
            assert_eq!(body["metadata"]["namespace"], NAMESPACE);
            assert_eq!(
                body["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
                "iris-serve"
            );
            assert_eq!(body["spec"]["podMetricsEndpoints"][0]["port"], "http");
        });
        let outcome = apply(&client, NAMESPACE).await.expect("apply");
        assert_eq!(
            outcome,
            Outcome::Applied {
                namespace: NAMESPACE.to_owned(),
                name: "iris-serve".to_owned()
            }
        );
        server.await.expect("mock saw the expected requests");
    }

    #[tokio::test]
    async fn without_the_crd_nothing_is_applied_and_the_run_goes_on() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            api.expect("GET", CRD_PATH, crd_not_found()).await;
            // The mock fails the test on any further request (a PATCH).
            api.expect("GET", CRD_PATH, json_response(crd(false))).await;
            // A user who may not read CRDs: the apply is tried, and the resource type is unknown.
            api.expect("GET", CRD_PATH, status_response(403, "Forbidden"))
                .await;
            let path =
                format!("/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/iris-serve");
            api.expect("PATCH", &path, status_response(404, "NotFound"))
                .await;
        });
        let outcome = apply(&client, NAMESPACE)
            .await
            .expect("a notice, not an error");
        assert!(
            matches!(&outcome, Outcome::NoOperator(why) if why.contains("no podmonitors.monitoring.coreos.com CRD")),
            "{outcome:?}"
        );
        let outcome = apply(&client, NAMESPACE).await.expect("a notice");
        assert!(
            matches!(&outcome, Outcome::NoOperator(why) if why.contains("does not serve v1")),
            "{outcome:?}"
        );
        let outcome = apply(&client, NAMESPACE).await.expect("a notice");
        assert!(
            matches!(&outcome, Outcome::NoOperator(why) if why.contains("does not serve monitoring.coreos.com/v1 podmonitors")),
            "{outcome:?}"
        );
        drop(client);
        server.await.expect("mock saw the expected requests");
    }
}
