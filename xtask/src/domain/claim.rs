//! What a run may delete: only what it recorded creating. A kind cluster is recognised as the
//! harness's by an ownership record written when the harness creates it (the run id, then the node
//! containers' ids), never by its name or kind's labels alone (every kind cluster has those). A
//! namespace on an existing cluster is this run's only if this run created it (a run-id annotation
//! and the UID the API server gave it), and is deleted with that UID as a precondition.

use std::path::PathBuf;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::platform::docker::Node;
use crate::platform::paths::state_dir;

/// The label (on Kubernetes nodes, through the kind config) and annotation (on a namespace) that
/// name the run that created them.
pub const RUN_ID_KEY: &str = "iris-serve.dev/run-id";
/// The field manager of the namespace create; the app's objects are applied by another, so the
/// apply never takes the run-id annotation away.
const CLAIM_MANAGER: &str = "iris-serve-xtask-claim";

/// A run id: UTC time, process id and a few random bits (two runs in one second differ).
pub fn new_run_id() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    let nanos = now.subsec_nanosecond();
    format!(
        "{}-{}-{:04x}",
        now.strftime("%Y%m%dT%H%M%SZ"),
        std::process::id(),
        nanos & 0xffff
    )
}

// ---------------------------------------------------------------------------------------------
// kind clusters.

/// `target/e2e/<cluster>/owner.json`: written before `kind create` starts, completed with the
/// node containers' ids once it returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub run_id: String,
    pub create_started_unix_s: i64,
    /// Empty while `kind create` runs (or if it was interrupted).
    pub node_ids: Vec<String>,
    /// The Docker network `kind` was absent when this run's create started: `kind create` makes
    /// it and `kind delete` leaves it, so the teardown removes it (see [`created_network`]).
    #[serde(default)]
    pub network_absent_before: bool,
}

/// Whether the Docker network `kind` as it is now is the one this run's create made: absent
/// before the create started and created after that (Docker's clock and ours are the same host's;
/// a second of slack for the rounding of `create_started_unix_s`). A network made by someone
/// else before the run, or in use by other containers, is never this run's to remove.
pub fn created_network(
    record: &ClusterRecord,
    network: &crate::platform::docker::NetworkInfo,
) -> bool {
    record.network_absent_before
        && network.created_unix_s >= record.create_started_unix_s - 1
        && network.containers == 0
}

pub fn record_path(cluster: &str) -> PathBuf {
    state_dir(cluster).join("owner.json")
}

pub fn read_record(cluster: &str) -> Option<ClusterRecord> {
    serde_json::from_slice(&std::fs::read(record_path(cluster)).ok()?).ok()
}

pub fn write_record(cluster: &str, record: &ClusterRecord) -> anyhow::Result<()> {
    let path = record_path(cluster);
    std::fs::create_dir_all(state_dir(cluster))?;
    let staged = path.with_extension("json.tmp");
    std::fs::write(&staged, serde_json::to_vec_pretty(record)?)?;
    std::fs::rename(&staged, &path).with_context(|| format!("writing {}", path.display()))
}

pub fn remove_record(cluster: &str) {
    let _ = std::fs::remove_file(record_path(cluster));
}

/// Whose are the node containers that carry this cluster's name?
#[derive(Debug, Clone, PartialEq)]
pub enum Ownership {
    /// No node container has this name.
    Absent,
    /// Made by the run in the record.
    Ours(ClusterRecord),
    /// Not made by this harness, as far as its records show: never delete it.
    NotOurs(String),
}

/// Decides from the containers Docker lists and the record the harness kept. A cluster is ours when
/// every node container is one the record names; while the record has no ids yet (an interrupted
/// `kind create`), when every node container was created after that create started.
pub fn ownership(cluster: &str, nodes: &[Node], record: Option<&ClusterRecord>) -> Ownership {
    if nodes.is_empty() {
        return Ownership::Absent;
    }
    let names = nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let Some(record) = record else {
        return Ownership::NotOurs(format!(
            "kind cluster {cluster:?} ({names}) has no ownership record ({}): this harness did not create it",
            record_path(cluster).display()
        ));
    };
    let foreign: Vec<&str> = if record.node_ids.is_empty() {
        nodes
            .iter()
            .filter(|n| n.created_unix_s < record.create_started_unix_s)
            .map(|n| n.name.as_str())
            .collect()
    } else {
        nodes
            .iter()
            .filter(|n| !record.node_ids.contains(&n.id))
            .map(|n| n.name.as_str())
            .collect()
    };
    if foreign.is_empty() {
        Ownership::Ours(record.clone())
    } else {
        Ownership::NotOurs(format!(
            "kind cluster {cluster:?} has node containers this harness did not create ({}; its record names run {})",
            foreign.join(", "),
            record.run_id
        ))
    }
}

/// How to delete by hand a cluster the harness will not delete.
pub fn delete_by_hand(cluster: &str) -> String {
    format!(
        "if it is yours to lose, delete it with `kind delete cluster --name {cluster}`, or pass --replace; or choose another name with --cluster-name"
    )
}

/// One run at a time per cluster name (per checkout): an exclusive lock on
/// `target/e2e/<cluster>.lock`, released when the process ends, however it ends.
pub struct ClusterLock {
    _file: std::fs::File,
}

pub fn lock_cluster(cluster: &str) -> anyhow::Result<ClusterLock> {
    let dir = crate::platform::paths::project_root().join("target/e2e");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{cluster}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(ClusterLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another run of the harness is using cluster {cluster:?} right now ({} is locked); wait for it, or use another --cluster-name",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces on existing clusters.

/// How this run holds the namespace.
#[derive(Debug, Clone, PartialEq)]
pub enum NamespaceClaim {
    /// Created by this run: deleted at the end, only if its UID is still this one.
    Created { name: String, uid: String },
    /// Someone else's, used because the user said so (`--use-existing-namespace`): never deleted.
    Borrowed { name: String },
}

/// Creates the namespace for this run, or refuses: one that exists was not created by this run
/// (another run, a `kubectl apply -f manifests/app`, a user's), so without `borrow` it is not touched;
/// a terminating one is refused either way. The create itself is the check against a concurrent
/// run: the API server lets only one of two creates succeed.
pub async fn claim_namespace(
    client: &Client,
    name: &str,
    run_id: &str,
    borrow: bool,
) -> anyhow::Result<NamespaceClaim> {
    let api = Api::<Namespace>::all(client.clone());
    if let Some(existing) = api.get_opt(name).await? {
        return existing_namespace(&existing, borrow);
    }
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    ns.metadata.annotations = Some([(RUN_ID_KEY.to_owned(), run_id.to_owned())].into());
    let params = PostParams {
        field_manager: Some(CLAIM_MANAGER.to_owned()),
        ..Default::default()
    };
    match api.create(&params, &ns).await {
        Ok(created) => {
            let uid = created
                .uid()
                .context("the API server returned the namespace without a UID")?;
            eprintln!("  created namespace {name} (run {run_id}, uid {uid})");
            Ok(NamespaceClaim::Created {
                name: name.to_owned(),
                uid,
            })
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Someone created it between our get and our create.
            let existing = api.get(name).await?;
            existing_namespace(&existing, borrow)
        }
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

fn existing_namespace(ns: &Namespace, borrow: bool) -> anyhow::Result<NamespaceClaim> {
    let name = ns.name_any();
    if ns.metadata.deletion_timestamp.is_some() {
        bail!(
            "namespace {name} is being deleted (deletionTimestamp set, e.g. by an earlier run's teardown); wait until it is gone (`kubectl get namespace {name}`), then run again"
        );
    }
    if borrow {
        eprintln!(
            "  using the existing namespace {name} (--use-existing-namespace): objects in it may be overwritten, and it will not be deleted"
        );
        return Ok(NamespaceClaim::Borrowed { name });
    }
    let by = ns
        .annotations()
        .get(RUN_ID_KEY)
        .map(|run| {
            format!("created by another run of this harness ({run}), which may still be using it")
        })
        .unwrap_or_else(|| "not created by this run".to_owned());
    bail!(
        "namespace {name} already exists, {by}: this run will not apply over it or delete it. Delete it yourself if it is disposable (`kubectl delete namespace {name}`), or pass --use-existing-namespace to run in it without ever deleting it"
    )
}

/// Deletes a namespace this run created, only while it is still the one it created (same UID).
/// How long a run waits for its namespace to be deleted (the app's pods stop within their
/// grace period; seen live: a few seconds).
const NAMESPACE_GONE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

pub async fn release_namespace(client: &Client, claim: &NamespaceClaim) -> anyhow::Result<()> {
    let NamespaceClaim::Created { name, uid } = claim else {
        return Ok(());
    };
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .delete(name, &params)
        .await
    {
        Ok(_) => {
            eprintln!("  deleting namespace {name} (uid {uid})");
            // Gone when the run ends, so the next run (or the user) finds no terminating
            // namespace: the pods' grace periods and finalizers take some seconds.
            let namespaces = Api::<Namespace>::all(client.clone());
            crate::platform::k8s::poll_until(
                &format!("namespace {name} (uid {uid}) to be gone"),
                NAMESPACE_GONE_TIMEOUT,
                || async {
                    Ok(match namespaces.get_opt(name).await? {
                        Some(ns) if ns.metadata.uid.as_deref() == Some(uid.as_str()) => {
                            Err(format!(
                                "phase {}",
                                ns.status.and_then(|s| s.phase).unwrap_or_default()
                            ))
                        }
                        _ => Ok(()),
                    })
                },
            )
            .await
            .with_context(|| format!("`kubectl get namespace {name}` shows what holds it"))?;
            eprintln!("  namespace {name} is gone");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => bail!(
            "namespace {name} is no longer the one this run created (uid changed); left alone"
        ),
        Err(e) => Err(e).with_context(|| format!("deleting namespace {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::kubemock::{MockApi, json_response, status_response};

    fn node(id: &str, name: &str, created: i64) -> Node {
        Node {
            id: id.to_owned(),
            name: name.to_owned(),
            role: "worker".to_owned(),
            running: true,
            created_unix_s: created,
        }
    }

    #[test]
    fn a_cluster_is_ours_only_by_the_record() {
        let nodes = [
            node("a1", "c-control-plane", 100),
            node("b2", "c-worker", 101),
        ];
        assert_eq!(ownership("c", &[], None), Ownership::Absent);
        // kind's labels and the name are not enough: a user's own cluster of the same name.
        assert!(
            matches!(ownership("c", &nodes, None), Ownership::NotOurs(why) if why.contains("no ownership record"))
        );
        let complete = ClusterRecord {
            run_id: "r1".into(),
            create_started_unix_s: 99,
            node_ids: vec!["a1".into(), "b2".into()],
            network_absent_before: false,
        };
        assert_eq!(
            ownership("c", &nodes, Some(&complete)),
            Ownership::Ours(complete.clone())
        );
        // A node the record does not name (the cluster was replaced by someone else's).
        let other = [
            node("a1", "c-control-plane", 100),
            node("zz", "c-worker", 101),
        ];
        assert!(
            matches!(ownership("c", &other, Some(&complete)), Ownership::NotOurs(why) if why.contains("c-worker"))
        );
        // An interrupted create: no ids yet, so containers made after it started are its.
        let started = ClusterRecord {
            node_ids: Vec::new(),
            ..complete.clone()
        };
        assert!(matches!(
            ownership("c", &nodes, Some(&started)),
            Ownership::Ours(_)
        ));
        let older = [node("old", "c-control-plane", 50)];
        assert!(matches!(
            ownership("c", &older, Some(&started)),
            Ownership::NotOurs(_)
        ));
    }

    #[test]
    fn the_kind_network_is_removed_only_when_this_runs_create_made_it() {
        let record = ClusterRecord {
            run_id: "r1".into(),
            create_started_unix_s: 1_000,
            node_ids: vec!["a1".into()],
            network_absent_before: true,
        };
        let made = crate::platform::docker::NetworkInfo {
            id: "n1".into(),
            created_unix_s: 1_002,
            containers: 0,
        };
        assert!(created_network(&record, &made));
        // The creation second rounds down against the record's: one second of slack, no more.
        let same_second = crate::platform::docker::NetworkInfo {
            created_unix_s: 999,
            ..made.clone()
        };
        assert!(created_network(&record, &same_second));
        let older = crate::platform::docker::NetworkInfo {
            created_unix_s: 998,
            ..made.clone()
        };
        assert!(!created_network(&record, &older), "made before the run");
        let in_use = crate::platform::docker::NetworkInfo {
            containers: 1,
            ..made.clone()
        };
        assert!(
            !created_network(&record, &in_use),
            "another cluster's nodes"
        );
        let existed = ClusterRecord {
            network_absent_before: false,
            ..record
        };
        assert!(!created_network(&existed, &made), "it was there before");
        // Records written before the field existed read as "was there": never removed.
        let old: ClusterRecord =
            serde_json::from_str(r#"{"run_id":"r0","create_started_unix_s":1,"node_ids":[]}"#)
                .expect("old record");
        assert!(!old.network_absent_before);
    }

    #[test]
    fn one_run_per_cluster_name_at_a_time() {
        let name = crate::testkit::node::unique("iris-lock");
        let held = lock_cluster(&name).expect("first");
        let err = lock_cluster(&name).err().expect("second is refused");
        assert!(err.to_string().contains("another run"), "{err}");
        drop(held);
        lock_cluster(&name).expect("free again");
        let _ = std::fs::remove_file(
            crate::platform::paths::project_root().join(format!("target/e2e/{name}.lock")),
        );
    }

    #[test]
    fn run_ids_differ() {
        assert_ne!(new_run_id(), new_run_id());
    }

    const NS_PATH: &str = "/api/v1/namespaces";

    fn created_ns(run: &str, uid: &str) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "iris-serve", "uid": uid, "resourceVersion": "7", "annotations": {RUN_ID_KEY: run}}, "status": {"phase": "Active"}})
    }

    #[tokio::test]
    async fn a_namespace_this_run_creates_is_deleted_with_its_uid() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            api.expect(
                "GET",
                &format!("{NS_PATH}/iris-serve"),
                status_response(404, "NotFound"),
            )
            .await;
            let (query, body) = api
                .expect("POST", NS_PATH, json_response(created_ns("run-a", "uid-a")))
                .await;
            assert!(
                query.contains("fieldManager=iris-serve-xtask-claim"),
                "{query}"
            );
            assert_eq!(body["metadata"]["annotations"][RUN_ID_KEY], "run-a");
            let (_, body) = api
                .expect(
                    "DELETE",
                    &format!("{NS_PATH}/iris-serve"),
                    json_response(created_ns("run-a", "uid-a")),
                )
                .await;
            assert_eq!(body["preconditions"]["uid"], "uid-a", "{body}");
            // Terminating, then gone: the release waits for that.
            let mut terminating = created_ns("run-a", "uid-a");
            terminating["status"]["phase"] = "Terminating".into();
            api.expect(
                "GET",
                &format!("{NS_PATH}/iris-serve"),
                json_response(terminating),
            )
            .await;
            api.expect(
                "GET",
                &format!("{NS_PATH}/iris-serve"),
                status_response(404, "NotFound"),
            )
            .await;
        });
        let claim = claim_namespace(&client, "iris-serve", "run-a", false)
            .await
            .expect("claim");
        assert_eq!(
            claim,
            NamespaceClaim::Created {
                name: "iris-serve".into(),
                uid: "uid-a".into()
            }
        );
        release_namespace(&client, &claim).await.expect("release");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_namespace_that_exists_is_refused_unless_borrowed_and_then_never_deleted() {
        // The manifest's managed-by label is no proof: `kubectl apply -f manifests/app` sets it.
        let applied = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "iris-serve", "uid": "u1", "labels": {"app.kubernetes.io/managed-by": "iris-serve-xtask"}}});
        let (client, mut api) = MockApi::new();
        let answers = applied.clone();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                api.expect(
                    "GET",
                    &format!("{NS_PATH}/iris-serve"),
                    json_response(answers.clone()),
                )
                .await;
            }
        });
        let err = claim_namespace(&client, "iris-serve", "run-b", false)
            .await
            .expect_err("not ours");
        assert!(
            err.to_string()
                .contains("will not apply over it or delete it"),
            "{err}"
        );
        let claim = claim_namespace(&client, "iris-serve", "run-b", true)
            .await
            .expect("borrowed");
        assert_eq!(
            claim,
            NamespaceClaim::Borrowed {
                name: "iris-serve".into()
            }
        );
        // Releasing a borrowed namespace makes no request at all (the mock would see it).
        release_namespace(&client, &claim).await.expect("no-op");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_second_run_and_a_terminating_namespace_are_refused() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            // Run B finds run A's namespace.
            api.expect(
                "GET",
                &format!("{NS_PATH}/iris-serve"),
                json_response(created_ns("run-a", "uid-a")),
            )
            .await;
            // A race: absent on get, then A's create wins.
            api.expect(
                "GET",
                &format!("{NS_PATH}/iris-serve"),
                status_response(404, "NotFound"),
            )
            .await;
            api.expect("POST", NS_PATH, status_response(409, "AlreadyExists"))
                .await;
            api.expect(
                "GET",
                &format!("{NS_PATH}/iris-serve"),
                json_response(created_ns("run-a", "uid-a")),
            )
            .await;
            // A's teardown is under way: refused even with --use-existing-namespace.
            let mut terminating = created_ns("run-a", "uid-a");
            terminating["metadata"]["deletionTimestamp"] = "2026-11-24T15:00:00Z".into();
            terminating["status"]["phase"] = "Terminating".into();
            api.expect(
                "GET",
                &format!("{NS_PATH}/iris-serve"),
                json_response(terminating),
            )
            .await;
        });
        for _ in 0..2 {
            let err = claim_namespace(&client, "iris-serve", "run-b", false)
                .await
                .expect_err("A's");
            assert!(
                err.to_string()
                    .contains("another run of this harness (run-a)"),
                "{err}"
            );
        }
        let err = claim_namespace(&client, "iris-serve", "run-b", true)
            .await
            .expect_err("terminating");
        assert!(err.to_string().contains("is being deleted"), "{err}");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_namespace_replaced_since_is_left_alone() {
        let (client, mut api) = MockApi::new();
        let server = tokio::spawn(async move {
            api.expect(
                "DELETE",
                &format!("{NS_PATH}/iris-serve"),
                status_response(409, "Conflict"),
            )
            .await;
        });
        let claim = NamespaceClaim::Created {
            name: "iris-serve".into(),
            uid: "uid-a".into(),
        };
        let err = release_namespace(&client, &claim)
            .await
            .expect_err("uid changed");
        assert!(err.to_string().contains("left alone"), "{err}");
        server.await.expect("server");
    }
}
