//! The Kubernetes API: a client from a kubeconfig (read only), the API URL, and every wait with
//! its condition. The conditions are small pure functions (`pod_ready`, `nodes_not_ready`,
//! `apiservice_available`) kept apart from `poll_until`, which polls one with a timeout that
//! names what never came.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};

/// How often a wait polls.
pub const POLL: Duration = Duration::from_secs(2);

/// A client for the cluster through its isolated kubeconfig.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    client_from(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("is the cluster up? (`cargo xtask cluster up`)")
}

/// A kubeconfig file, its error said once (kube's error already names the path and the cause;
/// keeping it as a source too would print the cause twice).
pub fn read_kubeconfig(path: &Path) -> anyhow::Result<Kubeconfig> {
    Kubeconfig::read_from(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The API server URL a kubeconfig's current context points at (kind: https://127.0.0.1:<port>).
pub async fn api_url(kubeconfig: &Path) -> anyhow::Result<String> {
    let kc = read_kubeconfig(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(config.cluster_url.to_string())
}

/// A client from a kubeconfig file (read only) and options such as the context.
pub async fn client_from(kubeconfig: &Path, options: &KubeConfigOptions) -> anyhow::Result<Client> {
    let kc = read_kubeconfig(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, options).await?;
    Ok(Client::try_from(config)?)
}

/// Polls `check` until it returns `Ok(Ok(()))`; on timeout the error says what never came and the
/// last status `check` reported (its `Err(String)`, or its error).
pub async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Result<(), String>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last;
    loop {
        match check().await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(status)) => last = status,
            Err(e) => last = format!("{e:#}"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "timed out after {}s waiting for {what}; last seen: {last}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn condition_true(
    conditions: Option<&Vec<k8s_openapi::api::core::v1::NodeCondition>>,
    kind: &str,
) -> bool {
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// Which of these nodes are not Ready (empty: all are), and whether there are `expected` of them.
pub fn nodes_not_ready(nodes: &[Node], expected: usize) -> Result<(), String> {
    let not_ready: Vec<String> = nodes
        .iter()
        .filter(|n| {
            !condition_true(
                n.status.as_ref().and_then(|s| s.conditions.as_ref()),
                "Ready",
            )
        })
        .map(ResourceExt::name_any)
        .collect();
    if nodes.len() < expected {
        return Err(format!("{} of {expected} nodes registered", nodes.len()));
    }
    if not_ready.is_empty() {
        Ok(())
    } else {
        Err(format!("nodes not Ready: {}", not_ready.join(", ")))
    }
}

pub fn pod_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Succeeded")
        || status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pods_not_ready(pods: &[Pod]) -> Result<(), String> {
    if pods.is_empty() {
        return Err("no pods yet".to_owned());
    }
    let not_ready: Vec<String> = pods
        .iter()
        .filter(|p| !pod_ready(p))
        .map(ResourceExt::name_any)
        .collect();
    if not_ready.is_empty() {
        Ok(())
    } else {
        Err(format!("pods not Ready: {}", not_ready.join(", ")))
    }
}

pub async fn wait_nodes_ready(
    client: &Client,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    poll_until(
        &format!("{expected} nodes to be Ready"),
        timeout,
        || async {
            let list = nodes.list(&ListParams::default()).await?;
            Ok(nodes_not_ready(&list.items, expected))
        },
    )
    .await
}

pub async fn wait_pods_ready(
    client: &Client,
    namespace: &str,
    selector: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = match selector {
        Some(s) => ListParams::default().labels(s),
        None => ListParams::default(),
    };
    let what = format!(
        "pods in {namespace}{} to be Ready",
        selector.map(|s| format!(" ({s})")).unwrap_or_default()
    );
    poll_until(&what, timeout, || async {
        let list = pods.list(&params).await?;
        Ok(pods_not_ready(&list.items))
    })
    .await
}

/// The APIService's Available condition.
pub fn apiservice_available(svc: Option<&APIService>) -> Result<(), String> {
    let conditions = svc
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.conditions.as_ref());
    match conditions.and_then(|c| c.iter().find(|c| c.type_ == "Available")) {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(format!(
            "Available={} ({}: {})",
            c.status,
            c.reason.as_deref().unwrap_or("-"),
            c.message.as_deref().unwrap_or("-")
        )),
        None => Err("no Available condition yet".to_owned()),
    }
}

/// A client for an existing cluster: a context of `kubeconfig`, else of $KUBECONFIG or
/// ~/.kube/config (read only), or their current context.
///
/// The API server is asked for its version once, so an unreachable one is named at once (which
/// server, which context, which kubeconfig, what to check) instead of surfacing later as a bare
/// "tcp connect error" from whichever call came first.
pub async fn client_for(
    context: Option<String>,
    kubeconfig: Option<&Path>,
) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: context.clone(),
        ..Default::default()
    };
    let (kc, source) = match kubeconfig {
        Some(path) => (read_kubeconfig(path)?, path.display().to_string()),
        None => (
            Kubeconfig::read().context("reading $KUBECONFIG or ~/.kube/config")?,
            "$KUBECONFIG or ~/.kube/config".to_owned(),
        ),
    };
    let context = context
        .or_else(|| kc.current_context.clone())
        .unwrap_or_else(|| "(none)".to_owned());
    let config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .with_context(|| format!("context {context} of {source}"))?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)?;
    match tokio::time::timeout(API_REACHABLE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        // With its causes: kube's own message stops at "client error (Connect)".
        Ok(Err(e)) => Err(unreachable(
            &server,
            &context,
            &source,
            &format!("{:#}", anyhow::Error::from(e)),
        )),
        Err(_) => Err(unreachable(
            &server,
            &context,
            &source,
            &format!("no answer within {}s", API_REACHABLE_TIMEOUT.as_secs()),
        )),
    }
}

const API_REACHABLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

fn unreachable(server: &str, context: &str, source: &str, error: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the API server {server} (context {context} of {source}) did not answer: {error}; check that the cluster is running and reachable from here (`kubectl --context {context} cluster-info`), and that the kubeconfig's server address is the cluster's"
    )
}

pub fn hpa_fields(
    hpa: &HorizontalPodAutoscaler,
) -> (Option<i32>, Option<i32>, Option<i32>, Vec<String>) {
    let Some(status) = &hpa.status else {
        return (None, None, None, Vec::new());
    };
    let cpu = status.current_metrics.iter().flatten().find_map(|m| {
        m.resource
            .as_ref()
            .filter(|r| r.name == "cpu")
            .and_then(|r| r.current.average_utilization)
    });
    let conditions = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status != "True")
        .map(|c| {
            format!(
                "{}={} ({})",
                c.type_,
                c.status,
                c.reason.as_deref().unwrap_or("-")
            )
        })
        .collect();
    (
        status.current_replicas,
        Some(status.desired_replicas),
        cpu,
        conditions,
    )
}

/// AbleToScale's reason, and ScalingLimited's reason when it is True.
pub fn hpa_reasons(hpa: &HorizontalPodAutoscaler) -> (Option<String>, Option<String>) {
    let conditions = hpa
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let reason = |kind: &str, only_true: bool| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && (!only_true || c.status == "True"))
            .and_then(|c| c.reason.clone())
    };
    (reason("AbleToScale", false), reason("ScalingLimited", true))
}
