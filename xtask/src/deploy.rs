//! `cargo xtask deploy`: the app from `manifests/app/`, server-side applied with the image set on
//! the typed Deployment; then wait for the rollout and for the HPA to report a CPU value.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::Api;

use crate::cluster::{self, poll_until};
use crate::manifests::{self, Object};
use crate::{docker, image};

pub const APP_DIR: &str = "manifests/app";
pub const NAMESPACE: &str = "iris-serve";
pub const NAME: &str = "iris-serve";
pub const CONTAINER: &str = "server";

const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);
/// metrics-server needs a scrape of a pod with >= 10s uptime, the HPA a sync after that.
const HPA_METRIC_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The kind cluster's name.
    #[arg(long, default_value = cluster::DEFAULT_NAME)]
    pub cluster_name: String,
    /// Deploy this image (already in the nodes); default: build it and load it into the nodes.
    #[arg(long)]
    pub image: Option<String>,
}

/// What the harness sets on the typed objects.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub image: String,
    /// `Never` for images loaded into kind's nodes (a pull would fail), else `IfNotPresent`.
    pub pull_policy: String,
    /// Override the HPA's maxReplicas (a scenario's bottleneck case).
    pub max_replicas: Option<i32>,
    /// Keep the Service's nodePort from the manifest (kind: its port mapping to the host needs
    /// 30080). Otherwise the API server allocates a free one (on a shared cluster 30080 can be
    /// taken), kept across re-applies, and [`node_port`] reads it back.
    pub fixed_node_port: bool,
}

/// The app's objects with the settings applied.
pub fn app_objects(settings: &AppSettings) -> anyhow::Result<Vec<Object>> {
    let mut objects = manifests::load_dir(APP_DIR)?;
    let deployment =
        manifests::deployment(&mut objects).context("manifests/app has no Deployment")?;
    let pod = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("the Deployment has no pod spec")?;
    let container = pod
        .containers
        .iter_mut()
        .find(|c| c.name == CONTAINER)
        .with_context(|| format!("the Deployment has no container named {CONTAINER}"))?;
    container.image = Some(settings.image.clone());
    container.image_pull_policy = Some(settings.pull_policy.clone());
    if !settings.fixed_node_port {
        for object in &mut objects {
            if let Object::Service(svc) = object {
                for port in svc
                    .spec
                    .iter_mut()
                    .flat_map(|s| s.ports.iter_mut().flatten())
                {
                    port.node_port = None;
                }
            }
        }
    }
    if let Some(max) = settings.max_replicas {
        for object in &mut objects {
            if let Object::HorizontalPodAutoscaler(hpa) = object
                && let Some(spec) = hpa.spec.as_mut()
            {
                spec.max_replicas = max;
                spec.min_replicas = Some(spec.min_replicas.unwrap_or(1).min(max));
            }
        }
    }
    Ok(objects)
}

/// The rollout of the Deployment's current spec is complete.
pub fn rollout_complete(d: Option<&Deployment>) -> Result<(), String> {
    let Some(d) = d else {
        return Err("the Deployment does not exist".to_owned());
    };
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = &d.status else {
        return Err("no status yet".to_owned());
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if status.observed_generation.unwrap_or(0) < generation {
        return Err(format!("generation {generation} not observed yet"));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < want || available < want || total > updated {
        return Err(format!(
            "{updated} updated, {available} available, {total} total of {want} wanted"
        ));
    }
    Ok(())
}

/// The HPA reports a current CPU utilization (metrics flow end to end).
pub fn hpa_reports_cpu(hpa: Option<&HorizontalPodAutoscaler>) -> Result<i32, String> {
    let hpa = hpa
        .filter(|h| h.status.is_some())
        .ok_or("no HPA status yet")?;
    let (_, _, cpu, not_true) = crate::observe::hpa_fields(hpa);
    cpu.ok_or_else(|| {
        let reasons = if not_true.is_empty() {
            "no conditions".to_owned()
        } else {
            not_true.join(", ")
        };
        format!("no CPU utilization yet; {reasons}")
    })
}

/// The app Service's nodePort, as the API server allocated or kept it.
pub async fn node_port(client: &Client) -> anyhow::Result<u16> {
    let svc = Api::<Service>::namespaced(client.clone(), NAMESPACE)
        .get(NAME)
        .await
        .with_context(|| format!("reading Service {NAMESPACE}/{NAME}"))?;
    let port = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("http"))
        .and_then(|p| p.node_port)
        .with_context(|| format!("Service {NAMESPACE}/{NAME} has no nodePort on its http port"))?;
    Ok(u16::try_from(port)?)
}

/// Applies the HPA as the manifest has it: the scenarios each set their own maximum, and a
/// cluster left up (`--keep`) should autoscale as deployed, not as the last scenario left it.
pub async fn restore_hpa(client: &Client) -> anyhow::Result<()> {
    let hpa = manifests::load_dir(APP_DIR)?
        .into_iter()
        .find(|o| matches!(o, Object::HorizontalPodAutoscaler(_)))
        .context("manifests/app has no HorizontalPodAutoscaler")?;
    manifests::apply(client, &hpa).await?;
    eprintln!("  restored {} as in the manifest", hpa.describe());
    Ok(())
}

/// Applies the app and waits until it serves and autoscaling has a metric.
pub async fn deploy(client: &Client, settings: &AppSettings) -> anyhow::Result<()> {
    let objects = app_objects(settings)?;
    for object in &objects {
        manifests::apply(client, object).await?;
        eprintln!("  applied {}", object.describe());
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    poll_until(
        &format!("Deployment {NAMESPACE}/{NAME} to finish its rollout"),
        ROLLOUT_TIMEOUT,
        || async {
            let d = deployments.get_opt(NAME).await?;
            Ok(rollout_complete(d.as_ref()))
        },
    )
    .await?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NAMESPACE);
    poll_until(
        &format!("HorizontalPodAutoscaler {NAMESPACE}/{NAME} to report CPU utilization"),
        HPA_METRIC_TIMEOUT,
        || async {
            let h = hpas.get_opt(NAME).await?;
            Ok(hpa_reports_cpu(h.as_ref()).map(|_| ()))
        },
    )
    .await
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(crate::signals::interruptible(async {
        let client = cluster::client(&cluster::kubeconfig_path(&args.cluster_name)).await?;
        let image = match &args.image {
            Some(i) => i.clone(),
            None => {
                let docker = docker::connect().await?;
                let built = image::build(&docker).await?;
                image::load(&docker, &built.reference, &args.cluster_name).await?;
                built.reference
            }
        };
        deploy(
            &client,
            &AppSettings {
                image,
                pull_policy: "Never".to_owned(),
                max_replicas: None,
                fixed_node_port: true,
            },
        )
        .await?;
        println!(
            "deployed; the app answers on http://127.0.0.1:{}/predict",
            cluster::DEFAULT_HOST_PORT
        );
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubemock::{MockApi, json_response};

    fn settings() -> AppSettings {
        AppSettings {
            image: "iris-serve:0123456789abcdef".to_owned(),
            pull_policy: "Never".to_owned(),
            max_replicas: None,
            fixed_node_port: true,
        }
    }

    #[test]
    fn the_image_and_limits_are_set_on_the_typed_objects() {
        let mut objects = app_objects(&AppSettings {
            max_replicas: Some(1),
            ..settings()
        })
        .expect("objects");
        let d = manifests::deployment(&mut objects)
            .expect("deployment")
            .clone();
        let c = &d.spec.expect("spec").template.spec.expect("pod").containers[0];
        assert_eq!(c.image.as_deref(), Some("iris-serve:0123456789abcdef"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
        let max = objects.iter().find_map(|o| match o {
            Object::HorizontalPodAutoscaler(h) => {
                h.spec.as_ref().map(|s| (s.min_replicas, s.max_replicas))
            }
            _ => None,
        });
        assert_eq!(max, Some((Some(1), 1)));
    }

    #[tokio::test]
    async fn an_existing_cluster_gets_an_allocated_node_port_read_back() {
        let service = |objects: &[Object]| {
            objects.iter().find_map(|o| match o {
                Object::Service(s) => {
                    Some(s.spec.clone().expect("spec").ports.expect("ports")[0].clone())
                }
                _ => None,
            })
        };
        let kind = app_objects(&settings()).expect("objects");
        assert_eq!(service(&kind).expect("svc").node_port, Some(30080));
        let existing = app_objects(&AppSettings {
            fixed_node_port: false,
            ..settings()
        })
        .expect("objects");
        assert_eq!(service(&existing).expect("svc").node_port, None);
        // The API server answers with the port it allocated.
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            api.expect(
                "GET",
                &format!("/api/v1/namespaces/{NAMESPACE}/services/{NAME}"),
                json_response(serde_json::json!({
                    "apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME},
                    "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 31457}]}
                })),
            )
            .await;
        });
        assert_eq!(node_port(&client).await.expect("port"), 31457);
        server.await.expect("mock");
    }

    #[tokio::test]
    async fn the_hpa_is_restored_as_in_the_manifest() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            let path = format!(
                "/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers/{NAME}"
            );
            let (query, body) = api
                .expect("PATCH", &path, json_response(serde_json::json!({
                    "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": NAME, "namespace": NAMESPACE},
                    "spec": {"scaleTargetRef": {"kind": "Deployment", "name": NAME}, "maxReplicas": 3}
                })))
                .await;
            assert!(query.contains("force=true"), "{query}");
            assert_eq!(body["spec"]["maxReplicas"], 3);
            assert_eq!(body["spec"]["minReplicas"], 1);
        });
        restore_hpa(&client).await.expect("restore");
        server.await.expect("mock");
    }

    fn deployment(
        generation: i64,
        observed: i64,
        updated: i32,
        available: i32,
        total: i32,
    ) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "generation": generation},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "availableReplicas": available, "replicas": total}
        })
    }

    fn hpa(cpu: Option<i32>) -> serde_json::Value {
        let metrics = cpu.map(|c| serde_json::json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": c, "averageValue": "1m"}}}]));
        serde_json::json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": NAME}, "maxReplicas": 3},
            "status": {"currentReplicas": 1, "desiredReplicas": 1, "currentMetrics": metrics,
                       "conditions": [{"type": "ScalingActive", "status": if cpu.is_some() {"True"} else {"False"}, "reason": "FailedGetResourceMetric"}]}
        })
    }

    #[tokio::test(start_paused = true)]
    async fn deploy_applies_server_side_then_waits_for_rollout_and_metrics() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            let expected = app_objects(&settings()).expect("objects");
            for object in &expected {
                let value = object.to_value().expect("value");
                let path = match object.kind() {
                    "Namespace" => format!("/api/v1/namespaces/{NAMESPACE}"),
                    "Service" => format!("/api/v1/namespaces/{NAMESPACE}/services/{NAME}"),
                    "Deployment" => {
                        format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}")
                    }
                    "HorizontalPodAutoscaler" => format!(
                        "/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers/{NAME}"
                    ),
                    other => panic!("unexpected {other}"),
                };
                let (query, body) = api
                    .expect("PATCH", &path, json_response(value.clone()))
                    .await;
                assert!(
                    query.contains("fieldManager=iris-serve-xtask") && query.contains("force=true"),
                    "{query}"
                );
                assert_eq!(body, value, "the applied body is the typed object");
            }
            let deployments = format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}");
            api.expect(
                "GET",
                &deployments,
                json_response(deployment(2, 1, 1, 1, 1)),
            )
            .await;
            api.expect(
                "GET",
                &deployments,
                json_response(deployment(2, 2, 1, 0, 2)),
            )
            .await;
            api.expect(
                "GET",
                &deployments,
                json_response(deployment(2, 2, 1, 1, 1)),
            )
            .await;
            let hpas = format!(
                "/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers/{NAME}"
            );
            api.expect("GET", &hpas, json_response(hpa(None))).await;
            api.expect("GET", &hpas, json_response(hpa(Some(3)))).await;
        });
        deploy(&client, &settings()).await.expect("deploy");
        server.await.expect("mock saw the expected requests");
    }

    #[test]
    fn rollout_and_hpa_conditions_say_what_is_missing() {
        let d: Deployment = serde_json::from_value(deployment(3, 2, 1, 1, 1)).expect("d");
        assert!(
            rollout_complete(Some(&d))
                .expect_err("old")
                .contains("generation 3")
        );
        let d: Deployment = serde_json::from_value(deployment(1, 1, 1, 1, 2)).expect("d");
        assert!(
            rollout_complete(Some(&d)).is_err(),
            "an old pod is still there"
        );
        assert!(rollout_complete(None).is_err());
        let h: HorizontalPodAutoscaler = serde_json::from_value(hpa(None)).expect("h");
        assert!(
            hpa_reports_cpu(Some(&h))
                .expect_err("none")
                .contains("FailedGetResourceMetric")
        );
        let h: HorizontalPodAutoscaler = serde_json::from_value(hpa(Some(42))).expect("h");
        assert_eq!(hpa_reports_cpu(Some(&h)), Ok(42));
    }
}
