//! `cargo xtask deploy`: the app from `manifests/app/`, server-side applied with the image set on
//! the typed Deployment; then wait for the rollout and for the HPA to report a CPU value.

use std::time::Duration;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{PodSpec, Service};
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::domain::cluster;
use crate::platform::k8s::poll_until;
use crate::platform::manifests::{self, Object};
use crate::platform::paths::project_root;

pub const APP_DIR: &str = "manifests/app";
/// The run's namespace, for our app and a user's alike (the harness's own, created and deleted
/// by the run).
pub const NAMESPACE: &str = "iris-serve";

const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);
/// metrics-server needs a scrape of a pod with >= 10s uptime, the HPA a sync after that.
const HPA_METRIC_TIMEOUT: Duration = Duration::from_secs(180);

/// The app under test: a folder of manifests (ours, `manifests/app/`, or a user's `--app DIR`)
/// and the names the harness reads from it.
#[derive(Debug, Clone)]
pub struct App {
    pub dir: PathBuf,
    /// The Iris server of this repository: its image is built here, its `/metrics` and
    /// `x-served-by` are known, and Pod Security "restricted" is required, not advised.
    pub ours: bool,
    pub namespace: String,
    /// The Deployment the HPA scales (its `scaleTargetRef`).
    pub deployment: String,
    pub hpa: String,
    /// The Service that selects the Deployment's pods.
    pub service: String,
    /// The container whose image the harness sets (`--container` when there are several).
    pub container: String,
    /// The Deployment's `matchLabels`, as a label selector.
    pub selector: String,
    /// The Service port the load goes to (`--port` when there are several).
    pub service_port: u16,
    /// The container port behind it (where a pod's `/metrics` is scraped).
    pub container_port: u16,
    /// Where each pod's own counts come from: ours for our server, the user's histogram
    /// (`--server-metrics`), or nowhere.
    pub server_metrics: Option<crate::domain::podmetrics::Source>,
}

/// Which port or container of a user's app, when it has several.
#[derive(Debug, Clone, Default)]
pub struct Choices {
    /// A Service port's name or number.
    pub port: Option<String>,
    pub container: Option<String>,
    /// The app's own Prometheus histogram (`--server-metrics`).
    pub server_metrics: Option<crate::domain::podmetrics::Source>,
}

impl App {
    /// The Iris server of `manifests/app/`.
    pub fn ours() -> anyhow::Result<App> {
        let dir = project_root().join(APP_DIR);
        let objects = manifests::load_dir(APP_DIR)?;
        Self::resolve(dir, true, &objects, &Choices::default())
    }

    /// A user's folder of manifests: a Deployment, a Service and a HorizontalPodAutoscaler at
    /// least, with any other namespaced objects they need.
    pub fn from_dir(dir: &Path, choices: &Choices) -> anyhow::Result<App> {
        let dir = std::path::absolute(dir).with_context(|| format!("--app {}", dir.display()))?;
        ensure!(
            dir.is_dir(),
            "--app {}: not a folder; give the folder of your app's manifests (a Deployment, a \
             Service and a HorizontalPodAutoscaler, as YAML files)",
            dir.display()
        );
        let objects = manifests::load_app_dir(&dir, NAMESPACE)?;
        let app = Self::resolve(dir.clone(), false, &objects, choices)
            .with_context(|| format!("--app {}", dir.display()))?;
        // Their app, their choice: the house rule is advice here.
        if let Some(pod) = pod_spec(&objects, &app.deployment)
            && let Err(e) = manifests::restricted(pod, &format!("Deployment {}", app.deployment))
        {
            eprintln!(
                "warning: {e:#} (the run goes on: it is your app; the harness's own pods are restricted)"
            );
        }
        Ok(app)
    }

    /// The names, read from the objects: the HPA's target, the Service selecting its pods, the
    /// port and container (asked for when ambiguous).
    fn resolve(
        dir: PathBuf,
        ours: bool,
        objects: &[Object],
        choices: &Choices,
    ) -> anyhow::Result<App> {
        let folder = dir.display().to_string();
        let hpas: Vec<&HorizontalPodAutoscaler> = objects
            .iter()
            .filter_map(|o| match o {
                Object::HorizontalPodAutoscaler(h) => Some(h.as_ref()),
                _ => None,
            })
            .collect();
        let hpa = match hpas.as_slice() {
            [one] => *one,
            [] => bail!(
                "{folder} has no HorizontalPodAutoscaler: the harness tests how an app autoscales; add one (autoscaling/v2) that scales your Deployment on CPU"
            ),
            many => bail!(
                "{folder} has {} HorizontalPodAutoscalers ({}): one app per folder",
                many.len(),
                many.iter()
                    .map(|h| h.name_any())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let target = &hpa
            .spec
            .as_ref()
            .context("the HorizontalPodAutoscaler has no spec")?
            .scale_target_ref;
        ensure!(
            target.kind == "Deployment",
            "HorizontalPodAutoscaler {} scales a {} ({}); the harness follows a Deployment",
            hpa.name_any(),
            target.kind,
            target.name
        );
        // The harness waits for, reports and checks the HPA's CPU utilization: without such a
        // metric the run would wait out its deploy timeout instead.
        let cpu_utilization = hpa
            .spec
            .as_ref()
            .and_then(|s| s.metrics.as_ref())
            .is_some_and(|m| {
                m.iter().any(|m| {
                    m.resource.as_ref().is_some_and(|r| {
                        r.name == "cpu"
                            && r.target.type_ == "Utilization"
                            && r.target.average_utilization.is_some()
                    })
                })
            });
        ensure!(
            cpu_utilization,
            "HorizontalPodAutoscaler {} has no metric of type Resource on cpu with a Utilization target: \
             the harness reads and checks the HPA's CPU utilization; add one, e.g. \
             metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}}}]",
            hpa.name_any()
        );
        let deployment = objects
            .iter()
            .find_map(|o| match o {
                Object::Deployment(d) if d.name_any() == target.name => Some(d.as_ref()),
                _ => None,
            })
            .with_context(|| {
                format!(
                    "HorizontalPodAutoscaler {} scales Deployment {}, which is not in {folder}",
                    hpa.name_any(),
                    target.name
                )
            })?;
        let spec = deployment
            .spec
            .as_ref()
            .context("the Deployment has no spec")?;
        ensure!(
            spec.selector
                .match_expressions
                .as_ref()
                .is_none_or(Vec::is_empty),
            "Deployment {}: selector.matchExpressions is not supported; select the pods with matchLabels",
            target.name
        );
        let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
        ensure!(
            !match_labels.is_empty(),
            "Deployment {} has no selector.matchLabels",
            target.name
        );
        let selector = match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let pod = spec
            .template
            .spec
            .as_ref()
            .context("the Deployment has no pod spec")?;
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        let container = match (&choices.container, pod.containers.as_slice()) {
            (Some(want), _) => pod
                .containers
                .iter()
                .find(|c| &c.name == want)
                .with_context(|| {
                    format!(
                        "--container {want}: Deployment {} has containers {}",
                        target.name,
                        names.join(", ")
                    )
                })?,
            (None, [one]) => one,
            (None, _) => bail!(
                "Deployment {} has containers {}: say which one serves the load with --container NAME",
                target.name,
                names.join(", ")
            ),
        };
        let services: Vec<&Service> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Service(s) => Some(s.as_ref()),
                _ => None,
            })
            .filter(|s| {
                let selector = s.spec.as_ref().and_then(|s| s.selector.clone());
                selector.is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
                })
            })
            .collect();
        let service = match services.as_slice() {
            [one] => *one,
            [] => bail!(
                "no Service in {folder} selects the pods of Deployment {} (labels {}): add one; the load goes to it",
                target.name,
                pod_labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            many => bail!(
                "Services {} all select the pods of Deployment {}: keep the one the load goes to",
                many.iter()
                    .map(|s| s.name_any())
                    .collect::<Vec<_>>()
                    .join(", "),
                target.name
            ),
        };
        let ports = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let describe_ports = || {
            ports
                .iter()
                .map(|p| match &p.name {
                    Some(n) => format!("{n} ({})", p.port),
                    None => p.port.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let port = match (&choices.port, ports.as_slice()) {
            (Some(want), _) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(want) || p.port.to_string() == *want)
                .with_context(|| {
                    format!(
                        "--port {want}: Service {} has ports {}",
                        service.name_any(),
                        describe_ports()
                    )
                })?,
            (None, [one]) => one,
            (None, []) => bail!("Service {} has no ports", service.name_any()),
            (None, _) => bail!(
                "Service {} has ports {}: say which one takes the load with --port NAME|NUMBER",
                service.name_any(),
                describe_ports()
            ),
        };
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let container_port = match &port.target_port {
            None => port.port,
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(name)) => named_port(container, name).with_context(|| {
                    format!(
                        "Service {} targets port {name:?}, which container {} of Deployment {} does not name",
                        service.name_any(),
                        container.name,
                        target.name
                    )
                })?,
        };
        Ok(App {
            dir,
            ours,
            namespace: NAMESPACE.to_owned(),
            deployment: target.name.clone(),
            hpa: hpa.name_any(),
            service: service.name_any(),
            container: container.name.clone(),
            selector,
            service_port: u16::try_from(port.port).context("the Service port")?,
            container_port: u16::try_from(container_port).context("the container port")?,
            server_metrics: if ours {
                Some(crate::domain::podmetrics::Source::Ours)
            } else {
                choices.server_metrics.clone()
            },
        })
    }

    /// The folder's objects, every namespaced one in the run's namespace, with the run's
    /// Namespace first (ours from `manifests/app/`; for a user's app, one that warns, and does
    /// not enforce, Pod Security "restricted").
    pub fn objects(&self) -> anyhow::Result<Vec<Object>> {
        let mut objects = if self.ours {
            manifests::load_dir(APP_DIR)?
        } else {
            let mut objects = manifests::load_app_dir(&self.dir, &self.namespace)?;
            objects.insert(0, self.namespace_object()?);
            objects
        };
        for o in &mut objects {
            o.set_namespace(&self.namespace);
        }
        Ok(objects)
    }

    fn namespace_object(&self) -> anyhow::Result<Object> {
        let value = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": self.namespace,
                "labels": {
                    "app.kubernetes.io/part-of": "iris-serve",
                    "app.kubernetes.io/managed-by": "iris-serve-xtask",
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/audit": "restricted",
                },
            },
        });
        Ok(Object::Namespace(manifests::strict(
            &value,
            "the run's namespace",
        )?))
    }

    /// The Deployment's pod template and its container under test, with the folder's objects
    /// they came from (in the run's namespace).
    pub fn pod(
        &self,
    ) -> anyhow::Result<(PodSpec, k8s_openapi::api::core::v1::Container, Vec<Object>)> {
        let objects = self.objects()?;
        let pod = self.pod_in(&objects)?.clone();
        let container = self.container_of(&pod)?.clone();
        Ok((pod, container, objects))
    }

    /// The container under test as `objects` (the app's, settings applied or not) have it.
    pub fn container_in<'a>(
        &self,
        objects: &'a [Object],
    ) -> anyhow::Result<&'a k8s_openapi::api::core::v1::Container> {
        self.container_of(self.pod_in(objects)?)
    }

    /// The Deployment's pod template in `objects`.
    fn pod_in<'a>(&self, objects: &'a [Object]) -> anyhow::Result<&'a PodSpec> {
        objects
            .iter()
            .find_map(|o| match o {
                Object::Deployment(d) if d.name_any() == self.deployment => d.spec.as_ref(),
                _ => None,
            })
            .with_context(|| {
                format!(
                    "{} has no Deployment {}",
                    self.dir.display(),
                    self.deployment
                )
            })?
            .template
            .spec
            .as_ref()
            .context("the Deployment has no pod template")
    }

    /// The container under test in the pod template.
    fn container_of<'a>(
        &self,
        pod: &'a PodSpec,
    ) -> anyhow::Result<&'a k8s_openapi::api::core::v1::Container> {
        pod.containers
            .iter()
            .find(|c| c.name == self.container)
            .with_context(|| format!("the Deployment has no container {}", self.container))
    }

    /// The images of the Deployment's pod other than the container under test's (its other
    /// containers and init containers), as `container=image`.
    pub fn other_images(&self) -> anyhow::Result<Vec<String>> {
        let (pod, _, _) = self.pod()?;
        Ok(pod
            .init_containers
            .iter()
            .flatten()
            .chain(&pod.containers)
            .filter(|c| c.name != self.container)
            .map(|c| format!("{}={}", c.name, c.image.as_deref().unwrap_or("-")))
            .collect())
    }

    /// What the report and messages call it.
    pub fn describe(&self) -> String {
        if self.ours {
            format!("the Iris server ({APP_DIR})")
        } else {
            format!("Deployment {} from {}", self.deployment, self.dir.display())
        }
    }
}

fn pod_spec<'a>(objects: &'a [Object], deployment: &str) -> Option<&'a PodSpec> {
    objects.iter().find_map(|o| match o {
        Object::Deployment(d) if d.name_any() == deployment => {
            d.spec.as_ref().and_then(|s| s.template.spec.as_ref())
        }
        _ => None,
    })
}

/// What the harness sets on the typed objects.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub app: App,
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

/// The app's objects with the settings applied: the image on its container; its Service port a
/// NodePort (on kind the one the cluster maps to the host, else one the API server allocates);
/// the HPA's maximum.
pub fn app_objects(settings: &AppSettings) -> anyhow::Result<Vec<Object>> {
    let app = &settings.app;
    let mut objects = app.objects()?;
    for object in &mut objects {
        match object {
            Object::Deployment(d) if d.name_any() == app.deployment => {
                let container = d
                    .spec
                    .as_mut()
                    .and_then(|s| s.template.spec.as_mut())
                    .and_then(|p| p.containers.iter_mut().find(|c| c.name == app.container))
                    .with_context(|| {
                        format!(
                            "Deployment {} has no container named {}",
                            app.deployment, app.container
                        )
                    })?;
                container.image = Some(settings.image.clone());
                container.image_pull_policy = Some(settings.pull_policy.clone());
            }
            Object::Service(svc) if svc.name_any() == app.service => {
                let spec = svc.spec.get_or_insert_with(Default::default);
                spec.type_ = Some("NodePort".to_owned());
                for port in spec.ports.iter_mut().flatten() {
                    let mapped =
                        settings.fixed_node_port && port.port == i32::from(app.service_port);
                    port.node_port = mapped.then_some(i32::from(cluster::NODE_PORT));
                }
            }
            Object::HorizontalPodAutoscaler(hpa) if hpa.name_any() == app.hpa => {
                if let Some(max) = settings.max_replicas
                    && let Some(spec) = hpa.spec.as_mut()
                {
                    spec.max_replicas = max;
                    spec.min_replicas = Some(spec.min_replicas.unwrap_or(1).min(max));
                }
            }
            _ => {}
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
    let (_, _, cpu, not_true) = crate::platform::k8s::hpa_fields(hpa);
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
pub async fn node_port(client: &Client, app: &App) -> anyhow::Result<u16> {
    let (ns, name) = (&app.namespace, &app.service);
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("reading Service {ns}/{name}"))?;
    let port = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.port == i32::from(app.service_port))
        .and_then(|p| p.node_port)
        .with_context(|| {
            format!(
                "Service {ns}/{name} has no nodePort on its port {}",
                app.service_port
            )
        })?;
    Ok(u16::try_from(port)?)
}

/// Applies the HPA as the manifest has it: the scenarios each set their own maximum, and a
/// cluster left up (`--keep`) should autoscale as deployed, not as the last scenario left it.
pub async fn restore_hpa(client: &Client, app: &App) -> anyhow::Result<()> {
    let hpa = app
        .objects()?
        .into_iter()
        .find(|o| matches!(o, Object::HorizontalPodAutoscaler(h) if h.name_any() == app.hpa))
        .with_context(|| {
            format!(
                "{} has no HorizontalPodAutoscaler {}",
                app.dir.display(),
                app.hpa
            )
        })?;
    manifests::apply(client, &hpa).await?;
    eprintln!("  restored {} as in the manifest", hpa.describe());
    Ok(())
}

/// The port a container names `name`.
pub fn named_port(container: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<i32> {
    container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// On a cluster kept by an earlier run (`--reuse`): the namespace that run left (ours, by its
/// managed-by label) may hold another app, whose NodePort and objects this one would collide
/// with. Then it is deleted, by its UID, and waited for, before this app is applied; with the same
/// app it stays (server-side apply updates it in place).
pub async fn clear_previous_app(client: &Client, app: &App) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let Some(ns) = Api::<Namespace>::all(client.clone())
        .get_opt(&app.namespace)
        .await?
    else {
        return Ok(());
    };
    let managed = ns
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|v| v == "iris-serve-xtask");
    let (Some(uid), true) = (ns.metadata.uid.clone(), managed) else {
        return Ok(());
    };
    // The cluster itself is one a run of ours made (found by `--reuse` by its labels), so what
    // its namespace holds was put there by runs of ours. Another app's Deployment or Service (a
    // Service holds the NodePort) means another app.
    let mine: Vec<String> = app
        .objects()?
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => s.metadata.name.clone(),
            _ => None,
        })
        .collect();
    let list = kube::api::ListParams::default();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &app.namespace)
        .list(&list)
        .await?
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .filter(|n| n != &app.deployment)
        .map(|n| format!("Deployment {n}"));
    let services = Api::<Service>::namespaced(client.clone(), &app.namespace)
        .list(&list)
        .await?
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .filter(|n| !mine.contains(n))
        .map(|n| format!("Service {n}"));
    let others: Vec<String> = deployments.chain(services).collect();
    if others.is_empty() {
        return Ok(());
    }
    eprintln!(
        "  namespace {} holds {} from an earlier run on this kept cluster, not {}'s: deleting it first",
        app.namespace,
        others.join(", "),
        app.describe()
    );
    crate::domain::claim::release_namespace(
        client,
        &crate::domain::claim::NamespaceClaim::Created {
            name: app.namespace.clone(),
            uid,
        },
    )
    .await
}

/// Applies the app and waits until it serves and autoscaling has a metric.
pub async fn deploy(client: &Client, settings: &AppSettings) -> anyhow::Result<()> {
    let app = &settings.app;
    let objects = app_objects(settings)?;
    for object in &objects {
        manifests::apply(client, object).await?;
        eprintln!("  applied {}", object.describe());
    }
    let ns = &app.namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    poll_until(
        &format!("Deployment {ns}/{} to finish its rollout", app.deployment),
        ROLLOUT_TIMEOUT,
        || async {
            let d = deployments.get_opt(&app.deployment).await?;
            Ok(rollout_complete(d.as_ref()))
        },
    )
    .await?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    poll_until(
        &format!(
            "HorizontalPodAutoscaler {ns}/{} to report CPU utilization",
            app.hpa
        ),
        HPA_METRIC_TIMEOUT,
        || async {
            let h = hpas.get_opt(&app.hpa).await?;
            Ok(hpa_reports_cpu(h.as_ref()).map(|_| ()))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::kubemock::{MockApi, json_response};

    const NAME: &str = "iris-serve";

    fn settings() -> AppSettings {
        AppSettings {
            app: App::ours().expect("manifests/app"),
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
        assert_eq!(
            node_port(&client, &settings().app).await.expect("port"),
            31457
        );
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
        restore_hpa(&client, &settings().app)
            .await
            .expect("restore");
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

/// A user's app folder (`--app`): names read from the objects, ambiguity and what the HPA cannot
/// work with refused with what to fix, any other namespaced kind kept as written.
#[cfg(test)]
mod user_app_tests {
    use super::*;

    const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: model
  namespace: somewhere-else
spec:
  selector:
    matchLabels: {app: model}
  template:
    metadata:
      labels: {app: model, tier: web}
    spec:
      containers:
        - name: api
          image: model:dev
          command: [uvicorn, main:app]
          ports:
            - {name: web, containerPort: 8000}
          resources: {requests: {cpu: 100m}}
          readinessProbe:
            httpGet: {path: /ready, port: web}
            timeoutSeconds: 3
            failureThreshold: 3
";
    const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: model-svc
spec:
  selector: {app: model}
  ports:
    - {name: http, port: 80, targetPort: web}
";
    const HPA: &str = "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: model-hpa
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: model}
  minReplicas: 1
  maxReplicas: 4
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 60}}
";
    const CONFIG_MAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: model-config
data: {LOG_LEVEL: info}
";

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        dir
    }

    fn app(files: &[(&str, &str)], choices: &Choices) -> anyhow::Result<App> {
        let dir = folder(files);
        let app = App::from_dir(dir.path(), choices)?;
        // The objects are read again at the deploy: keep the folder for the caller's checks.
        std::mem::forget(dir);
        Ok(app)
    }

    fn error(files: &[(&str, &str)], choices: &Choices) -> String {
        format!("{:#}", app(files, choices).expect_err("refused"))
    }

    const BASIC: [(&str, &str); 4] = [
        ("deployment.yaml", DEPLOYMENT),
        ("service.yaml", SERVICE),
        ("hpa.yaml", HPA),
        ("configmap.yml", CONFIG_MAP),
    ];

    #[test]
    fn the_names_come_from_the_objects_and_everything_lands_in_the_runs_namespace() {
        let app = app(&BASIC, &Choices::default()).expect("a user's app");
        assert!(!app.ours);
        assert_eq!(
            (
                app.deployment.as_str(),
                app.hpa.as_str(),
                app.service.as_str(),
                app.container.as_str()
            ),
            ("model", "model-hpa", "model-svc", "api")
        );
        assert_eq!(app.selector, "app=model");
        // Service port 80 targets the container port named `web`.
        assert_eq!((app.service_port, app.container_port), (80, 8000));
        let settings = AppSettings {
            app: app.clone(),
            image: "my-model:1".into(),
            pull_policy: "Never".into(),
            max_replicas: Some(2),
            fixed_node_port: true,
        };
        let objects = app_objects(&settings).expect("objects");
        let described: Vec<String> = objects.iter().map(Object::describe).collect();
        assert_eq!(
            described,
            [
                "Namespace iris-serve",
                "ConfigMap iris-serve/model-config",
                "Deployment iris-serve/model",
                "HorizontalPodAutoscaler iris-serve/model-hpa",
                "Service iris-serve/model-svc",
            ]
        );
        // The namespace warns about Pod Security "restricted" and does not enforce it.
        let Object::Namespace(ns) = &objects[0] else {
            panic!("namespace first")
        };
        let labels = ns.metadata.labels.clone().expect("labels");
        assert_eq!(labels["pod-security.kubernetes.io/warn"], "restricted");
        assert!(!labels.contains_key("pod-security.kubernetes.io/enforce"));
        for o in &objects {
            match o {
                Object::Deployment(d) => {
                    let c = &d
                        .spec
                        .clone()
                        .expect("spec")
                        .template
                        .spec
                        .expect("pod")
                        .containers[0];
                    assert_eq!(c.image.as_deref(), Some("my-model:1"));
                    // Their command is theirs.
                    assert_eq!(c.command, Some(vec!["uvicorn".into(), "main:app".into()]));
                    assert_eq!(c.args, None);
                }
                Object::Service(s) => {
                    let spec = s.spec.clone().expect("spec");
                    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
                    assert_eq!(
                        spec.ports.expect("ports")[0].node_port,
                        Some(i32::from(cluster::NODE_PORT))
                    );
                }
                Object::HorizontalPodAutoscaler(h) => {
                    assert_eq!(h.spec.as_ref().expect("spec").max_replicas, 2);
                }
                Object::Other(c) => {
                    assert_eq!(c.value["data"]["LOG_LEVEL"], "info");
                    assert_eq!(c.value["metadata"]["namespace"], "iris-serve");
                }
                Object::Namespace(_) => {}
                other => panic!("unexpected {}", other.describe()),
            }
        }
    }

    #[test]
    fn ambiguity_asks_for_port_or_container_and_the_choice_is_honoured() {
        let two_ports = SERVICE.replace(
            "    - {name: http, port: 80, targetPort: web}\n",
            "    - {name: http, port: 80, targetPort: web}\n    - {name: admin, port: 9090, targetPort: 9091}\n",
        );
        let files = [
            ("d.yaml", DEPLOYMENT),
            ("s.yaml", two_ports.as_str()),
            ("h.yaml", HPA),
        ];
        let err = error(&files, &Choices::default());
        assert!(
            err.contains("--port NAME|NUMBER") && err.contains("http (80), admin (9090)"),
            "{err}"
        );
        let by_number = app(
            &files,
            &Choices {
                port: Some("9090".into()),
                ..Choices::default()
            },
        )
        .expect("--port 9090");
        assert_eq!(
            (by_number.service_port, by_number.container_port),
            (9090, 9091)
        );
        let by_name = app(
            &files,
            &Choices {
                port: Some("http".into()),
                ..Choices::default()
            },
        )
        .expect("--port http");
        assert_eq!(by_name.service_port, 80);
        let err = error(
            &files,
            &Choices {
                port: Some("grpc".into()),
                ..Choices::default()
            },
        );
        assert!(
            err.contains("--port grpc: Service model-svc has ports"),
            "{err}"
        );

        let sidecar = DEPLOYMENT.replace(
            "      containers:\n",
            "      containers:\n        - name: proxy\n          image: envoy:1\n          resources: {requests: {cpu: 10m}}\n          readinessProbe: {tcpSocket: {port: 1}, timeoutSeconds: 3}\n",
        );
        let files = [
            ("d.yaml", sidecar.as_str()),
            ("s.yaml", SERVICE),
            ("h.yaml", HPA),
        ];
        let err = error(&files, &Choices::default());
        assert!(
            err.contains("containers proxy, api") && err.contains("--container NAME"),
            "{err}"
        );
        let chosen = app(
            &files,
            &Choices {
                container: Some("api".into()),
                ..Choices::default()
            },
        )
        .expect("--container api");
        assert_eq!(
            (chosen.container.as_str(), chosen.container_port),
            ("api", 8000)
        );
    }

    #[test]
    fn what_the_hpa_cannot_work_with_is_refused_with_what_to_fix() {
        let cases = [
            (
                DEPLOYMENT.replace("spec:\n  selector", "spec:\n  replicas: 2\n  selector"),
                "sets spec.replicas (2); remove it",
            ),
            (
                DEPLOYMENT.replace("          resources: {requests: {cpu: 100m}}\n", ""),
                "container api has no CPU request",
            ),
            (
                DEPLOYMENT.replace(
                    "          resources: {requests: {cpu: 100m}}\n",
                    "          resources: {requests: {memory: 64Mi}}\n",
                ),
                "container api has no CPU request",
            ),
            (
                DEPLOYMENT[..DEPLOYMENT.find("          readinessProbe").expect("probe")]
                    .to_owned(),
                "container api has no readinessProbe",
            ),
        ];
        for (deployment, want) in cases {
            let err = error(
                &[
                    ("d.yaml", &deployment),
                    ("s.yaml", SERVICE),
                    ("h.yaml", HPA),
                ],
                &Choices::default(),
            );
            assert!(err.contains(want), "want {want:?} in: {err}");
        }
        // An HPA on memory only, or on a CPU average value: the harness reads CPU utilization.
        for hpa in [
            HPA.replace("name: cpu", "name: memory"),
            HPA.replace(
                "{type: Utilization, averageUtilization: 60}",
                "{type: AverageValue, averageValue: 200m}",
            ),
        ] {
            let err = error(
                &[
                    ("d.yaml", DEPLOYMENT),
                    ("s.yaml", SERVICE),
                    ("h.yaml", &hpa),
                ],
                &Choices::default(),
            );
            assert!(
                err.contains("has no metric of type Resource on cpu with a Utilization target"),
                "{err}"
            );
        }
        let cluster_role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: reader\nrules: []\n";
        let err = error(
            &[
                ("d.yaml", DEPLOYMENT),
                ("s.yaml", SERVICE),
                ("h.yaml", HPA),
                ("r.yaml", cluster_role),
            ],
            &Choices::default(),
        );
        assert!(
            err.contains("r.yaml: ClusterRole reader: ClusterRole is cluster-scoped"),
            "{err}"
        );
        let err = error(
            &[("d.yaml", DEPLOYMENT), ("s.yaml", SERVICE)],
            &Choices::default(),
        );
        assert!(err.contains("has no HorizontalPodAutoscaler"), "{err}");
        let err = error(
            &[("d.yaml", DEPLOYMENT), ("h.yaml", HPA)],
            &Choices::default(),
        );
        assert!(
            err.contains("no Service in") && err.contains("selects the pods of Deployment model"),
            "{err}"
        );
        let other_target = HPA.replace("name: model}", "name: elsewhere}");
        let err = error(
            &[
                ("d.yaml", DEPLOYMENT),
                ("s.yaml", SERVICE),
                ("h.yaml", &other_target),
            ],
            &Choices::default(),
        );
        assert!(
            err.contains("scales Deployment elsewhere, which is not in"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            App::from_dir(Path::new("/nonexistent/app"), &Choices::default()).expect_err("no dir")
        );
        assert!(err.contains("not a folder"), "{err}");
    }

    #[test]
    fn a_pod_that_is_not_restricted_is_run_with_a_warning() {
        // No securityContext at all: a warning, not a refusal (it is their app).
        let app = app(&BASIC, &Choices::default()).expect("runs");
        assert!(
            manifests::restricted(
                pod_spec(&app.objects().expect("objects"), "model").expect("pod"),
                "x"
            )
            .is_err()
        );
    }

    /// The example of a seed project's own stack, run live in CI (`.ci/live-e2e.sh`).
    #[test]
    fn the_fastapi_example_is_an_app_and_its_scenarios_parse() {
        let dir = project_root().join("manifests/examples/fastapi-iris");
        let app = App::from_dir(&dir, &Choices::default()).expect("the example");
        assert_eq!(
            (
                app.deployment.as_str(),
                app.container.as_str(),
                app.service_port,
                app.container_port
            ),
            ("fastapi-iris", "app", 80, 8000)
        );
        let kinds: Vec<String> = app
            .objects()
            .expect("objects")
            .iter()
            .map(Object::kind_name)
            .collect();
        for kind in ["ConfigMap", "PodDisruptionBudget"] {
            assert!(kinds.iter().any(|k| k == kind), "{kinds:?}");
        }
        // Their pod is locked down too, though only advised for a user's app.
        let objects = app.objects().expect("objects");
        manifests::restricted(pod_spec(&objects, "fastapi-iris").expect("pod"), "example")
            .expect("restricted");
        let file = dir.join("scenarios.yaml");
        let scenarios =
            crate::domain::scenario::ScenarioFile::select(file.to_str()).expect("scenarios");
        for s in &scenarios {
            let load = s.load_config("http://127.0.0.1:30080/").expect("load");
            assert_eq!(load.config.url.path(), "/predict");
        }
    }

    #[test]
    fn ours_reads_the_same_names_as_before() {
        let app = App::ours().expect("ours");
        assert!(app.ours);
        assert_eq!(
            (
                app.deployment.as_str(),
                app.hpa.as_str(),
                app.service.as_str(),
                app.container.as_str(),
                app.selector.as_str(),
                app.container_port,
                app.namespace.as_str()
            ),
            (
                "iris-serve",
                "iris-serve",
                "iris-serve",
                "server",
                "app.kubernetes.io/name=iris-serve",
                8080,
                NAMESPACE
            )
        );
    }
}
